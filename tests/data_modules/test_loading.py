import re
from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from data_modules.batch import IGNORE_INDEX, VIDEO_TOKEN
from data_modules.collate import Collator, encode_turns, load_tokenizer
from data_modules.datasets import ClipLoader, MapDataset, StreamingDataset
from data_modules.skips import SkipCounter
from data_modules.sources import CaptionManifest, WebDatasetSource
from data_modules.transforms import VideoTransform

N_CLIPS = 12  # as in conftest.py

GOOD = {f"clip{i:02d}" for i in range(N_CLIPS - 1)}  # the last shard sample is corrupt


def _loader():
    return ClipLoader(VideoTransform(16), num_frames=2, sampling="uniform")


def _collator(assets):
    return Collator(str(assets / "tokenizer"))


def _stream(assets, skips, rank=0, world=1, buffer=4):
    src = WebDatasetSource(str(assets / "shards" / "part-{0000..0003}.tar"))
    return StreamingDataset(
        src, _loader(), skips, shuffle=True, shuffle_buffer=buffer, seed=1, rank=rank, world_size=world
    )


def _keys(loader):
    return [k for b in loader for k in b["keys"]]


def test_label_mask_covers_exactly_the_answer(assets):
    tok = load_tokenizer(str(assets / "tokenizer"))
    for template in (True, False):
        if not template:
            tok.chat_template = None
        ids, labels = encode_turns(tok, [("What colour is it?", "red"), ("And now?", "blue")])
        assert ids.count(tok.convert_tokens_to_ids(VIDEO_TOKEN)) == 1
        kept = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        assert [l for l in labels if l != IGNORE_INDEX] == kept
        text = tok.decode(kept)
        assert text.startswith("red") and "blue" in text and "What" not in text and "And now" not in text
        end = text[len("red") : text.index("blue")]  # only the template's end-of-turn text between the answers
        assert set(end.replace(tok.eos_token, "").strip()) == set()
    with pytest.raises(ValueError, match="one <video>"):
        encode_turns(tok, [("<video> <video>", "x")])


def test_collate_left_padding_and_boxes(assets):
    col = Collator(str(assets / "tokenizer"), padding_side="left")
    s = [
        {
            "key": k,
            "video": torch.zeros(2, 3, 16, 16),
            "frame_mask": torch.ones(2, dtype=torch.bool),
            "boxes": torch.rand(2, k_, 4) if k_ else None,
            "box_mask": torch.ones(2, k_, dtype=torch.bool),
            "turns": [(f"<video>\n{q}", "A")],
            "qformer_text": q,
            "question_type": "CW",
            "options": ["x", "y"],
            "answer_index": 1,
        }
        for k, k_, q in (("a", 2, "why"), ("b", 0, "what happened after the red one fell"))
    ]
    b = col(s)
    assert b["attention_mask"][0, 0] == 0 and b["attention_mask"][:, -1].tolist() == [1, 1]
    assert b["boxes"].shape == (2, 2, 2, 4) and b["box_mask"][1].sum() == 0
    assert b["answer_index"].tolist() == [1, 1] and b["options"][0] == ["x", "y"]
    assert (b["labels"] != IGNORE_INDEX).sum(1).min() > 0


def test_streaming_two_ranks_two_workers_see_each_sample_once(assets):
    skips = SkipCounter(max_bad_fraction=0.5)
    seen = []
    for rank in (0, 1):
        ds = _stream(assets, skips, rank, 2)
        seen += _keys(StatefulDataLoader(ds, batch_size=2, num_workers=2, collate_fn=_collator(assets)))
    assert Counter(seen) == Counter(GOOD)
    assert skips.totals()["skipped/decode_error"] == 1 and skips.totals()["good"] == len(GOOD)


def test_streaming_epochs_differ_and_repeat_from_seed(assets):
    def two_epochs():
        dl = StatefulDataLoader(
            _stream(assets, SkipCounter(0.5)), batch_size=3, num_workers=2, collate_fn=_collator(assets)
        )
        return _keys(dl), _keys(dl)

    e0, e1 = two_epochs()
    assert sorted(e0) == sorted(e1) == sorted(GOOD) and e0 != e1
    assert two_epochs() == (e0, e1)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resume_mid_epoch(assets, workers):
    def make():
        return StatefulDataLoader(
            _stream(assets, SkipCounter(0.5)), batch_size=2, num_workers=workers, collate_fn=_collator(assets)
        )

    full = _keys(make())
    dl = make()
    it, first = iter(dl), []
    for _ in range(2):
        first += next(it)["keys"]
    state = dl.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    rest = _keys(resumed)
    assert first + rest == full


def test_map_style_ranks_resume_and_skips(assets, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "video,caption\n"
        + "".join(f"videos/clip{i:02d}.mp4,clip {i}\n" for i in range(N_CLIPS))
        + "videos/missing.mp4,gone\nvideos/broken.mp4,bad\n"
    )
    skips = SkipCounter(max_bad_fraction=0.5)
    ds = MapDataset(CaptionManifest(str(csv), video_root=str(assets)).load(skips), _loader(), skips)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        seen += _keys(
            StatefulDataLoader(ds, sampler=sampler, batch_size=2, num_workers=2, collate_fn=_collator(assets))
        )
    # a bad row is replaced by the next good record (wrapping): "missing" tries "broken" too, then clip00
    assert set(seen) == {f"clip{i:02d}" for i in range(N_CLIPS)} and len(seen) == N_CLIPS + 2
    t = skips.totals()
    assert (t["skipped/missing_file"], t["skipped/decode_error"]) == (1, 2)

    good = MapDataset(ds.records[:N_CLIPS], _loader(), skips)

    def make():
        return StatefulDataLoader(
            good,
            batch_size=3,
            shuffle=True,
            num_workers=2,
            collate_fn=_collator(assets),
            generator=torch.Generator().manual_seed(0),
        )

    full = _keys(make())
    dl = make()
    it = iter(dl)
    first = next(it)["keys"] + next(it)["keys"]
    state = dl.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    assert first + _keys(resumed) == full


def _shard(path, samples: dict[str, bytes]) -> bytes:
    """A tar shard of `{key}.mp4` + `{key}.json` per sample; returns its bytes."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, video in samples.items():
            for name, data in ((f"{key}.mp4", video), (f"{key}.json", json.dumps({"caption": key}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def _damaged_mkv(path, bad=(5, 6, 9)) -> bytes:
    """16 frames of H.264 in Matroska whose packets `bad` hold noise: they fail to decode, the rest decode."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=8, options={"g": "4", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        packets = []
        for i in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 15 * i, np.uint8), format="rgb24")
            frame.pts = i
            packets += list(stream.encode(frame))
        for i, packet in enumerate(packets + list(stream.encode())):
            if i in bad:
                view = memoryview(packet).cast("B")
                view[4:] = rng.integers(0, 256, len(view) - 4, dtype=np.uint8).tobytes()
            container.mux(packet)
    return path.read_bytes()


def _streamed(shards: list[str], skips: SkipCounter, damaged: str = "skip") -> list[str]:
    loader = ClipLoader(VideoTransform(16), num_frames=16, sampling="uniform", damaged=damaged)
    return [s["key"] for s in StreamingDataset(WebDatasetSource(shards), loader, skips, shuffle=False)]


def test_truncated_shard_is_one_skip_naming_shard_and_key(assets, tmp_path, caplog):
    clips = {f"clip{i:02d}": (assets / "videos" / f"clip{i:02d}.mp4").read_bytes() for i in range(3)}
    whole = _shard(tmp_path / "whole.tar", clips)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: whole.index(b"clip02.json") + 515])  # breaks off inside the data of clip02.json
    skips = SkipCounter(max_bad_fraction=1.0)
    assert _streamed([str(cut)], skips) == ["clip00", "clip01"]
    t = skips.totals()
    assert (t["skipped"], t["skipped/malformed"], t["good"]) == (1, 1, 2)
    assert f"skipping sample {cut}:clip02: malformed: incomplete, the shard breaks off here" in caplog.text
    assert caplog.text.count(f"shard {cut} could not be read to its end") == 1


def test_partly_damaged_clip_is_a_skip_unless_kept(tmp_path, caplog):
    shard = tmp_path / "s.tar"
    _shard(shard, {"bad": _damaged_mkv(tmp_path / "damaged.mkv"), "ok": _damaged_mkv(tmp_path / "intact.mkv", bad=())})
    skips = SkipCounter(max_bad_fraction=1.0)
    assert _streamed([str(shard)], skips) == ["ok"]
    assert skips.totals()["skipped/decode_error"] == 1 and skips.totals()["good"] == 1
    assert re.search(
        f"skipping sample {re.escape(str(shard))}:bad: decode_error: [0-9]+ packets failed to decode", caplog.text
    )
    kept = SkipCounter(max_bad_fraction=1.0)
    assert _streamed([str(shard)], kept, damaged="keep") == ["bad", "ok"] and kept.totals()["skipped"] == 0


def test_streaming_decode_errors_name_the_shard(assets, caplog):
    skips = SkipCounter(max_bad_fraction=0.5)
    _keys(StatefulDataLoader(_stream(assets, skips), batch_size=2, collate_fn=_collator(assets)))
    assert f"skipping sample {assets / 'shards' / 'part-0003.tar'}:clip11: decode_error" in caplog.text
