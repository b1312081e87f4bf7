"""Real datasets as their users lay them out: small files written here from the published layouts (NExT-QA's map
file and code columns, WebVid's downloader CSV, VideoChat2-IT's `i` and windows, LLaVA image + video mixtures)."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_assets import llava_turn

from data_modules.batch import VIDEO_TOKEN
from data_modules.collate import Collator
from data_modules.datamodules import InstructionDataModule
from data_modules.datasets import ClipLoader
from data_modules.skips import SkipCounter
from data_modules.sources import CaptionManifest, LlavaInstructions, MultipleChoice, VideoChat2Instructions
from data_modules.sources.manifest import parse_duration
from data_modules.transforms import VideoTransform

NEXTQA_HEADER = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"


@pytest.fixture
def nextqa(tmp_path, assets):
    """NExT-QA as released: NExTVideo/<folder>/<id>.mp4, map_vid_vidorID.json, val.csv with extra columns."""
    mapping = {"2440175990": "1106/2440175990", "4882821564": "0020/4882821564", "9999999999": "0000/9999999999"}
    for i, (vid, rel) in enumerate(list(mapping.items())[:2]):
        (tmp_path / "NExTVideo" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(assets / "videos" / f"clip{i:02d}.mp4", tmp_path / "NExTVideo" / f"{rel}.mp4")
    (tmp_path / "map_vid_vidorID.json").write_text(json.dumps(mapping))
    (tmp_path / "val.csv").write_text(
        NEXTQA_HEADER
        + "2440175990,1620,640,480,why did the boy fall,2,0,CW,run,jump,slip,sit,stand\n"
        + "4882821564,900,640,360,what did the dog do after the jump,0,3,TN,run,jump,sit,lie,roll\n"
        + "4882821564,900,640,360,how many dogs,1,4,DC,one,two,three,four,five\n"
        + "1234567890,900,640,360,not in the map,1,5,DL,a,b,c,d,e\n"
    )
    return tmp_path


def test_nextqa_map_file_resolves_the_released_layout(nextqa, caplog):
    skips = SkipCounter(max_bad_fraction=1.0)
    mc = MultipleChoice(
        str(nextqa / "val.csv"),
        video_root=str(nextqa / "NExTVideo"),
        video_map=str(nextqa / "map_vid_vidorID.json"),
        video_path="{video}.mp4",
    )
    recs = mc.load(skips)
    assert [r.video for r in recs] == [
        str(nextqa / "NExTVideo/1106/2440175990.mp4"),
        str(nextqa / "NExTVideo/0020/4882821564.mp4"),
        str(nextqa / "NExTVideo/0020/4882821564.mp4"),
    ]
    assert all((nextqa / r.video).is_file() for r in recs)
    assert [r.question_type for r in recs] == ["CW", "TN", "DC"] and recs[0].options[2] == "slip"
    assert [r.key for r in recs] == ["2440175990_0", "4882821564_3", "4882821564_4"]
    assert skips.totals()["skipped/missing_file"] == 1 and "'1234567890' is not in the video map" in caplog.text


def test_nextqa_map_file_errors_name_the_file(tmp_path):
    (tmp_path / "val.csv").write_text(NEXTQA_HEADER)
    with pytest.raises(FileNotFoundError, match="map_vid_vidorID.json"):
        MultipleChoice(str(tmp_path / "val.csv"), video_map=str(tmp_path / "map_vid_vidorID.json")).load(SkipCounter())
    (tmp_path / "map.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="map.json"):
        MultipleChoice(str(tmp_path / "val.csv"), video_map=str(tmp_path / "map.json")).load(SkipCounter())


def test_nextqa_layout_decodes_through_the_datamodule(nextqa, assets):
    mc = MultipleChoice(
        str(nextqa / "val.csv"),
        video_root=str(nextqa / "NExTVideo"),
        video_map=str(nextqa / "map_vid_vidorID.json"),
        video_path="{video}.mp4",
    )
    dm = InstructionDataModule(
        train=mc,
        val=mc,
        test=mc,
        tokenizer=str(assets / "tokenizer"),
        num_frames=4,
        batch_size=3,
        num_workers=0,
        max_bad_fraction=1.0,
    )
    dm.setup("test")
    dm.configure_preprocess(32, (0.5,) * 3, (0.5,) * 3)
    batch = next(iter(dm.test_dataloader()))
    assert batch["video"].shape == (3, 4, 3, 32, 32) and batch["question_type"] == ["CW", "TN", "DC"]
    assert dm.skip_counts()["good"] == 3


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("PT00H00M17S", 17.0),
        ("PT00H01M02S", 62.0),
        ("PT1H", 3600.0),
        ("PT2.5S", 2.5),
        ("P1DT0H0M1S", 86401.0),
        ("12", 12.0),
        ("7.25", 7.25),
    ],
)
def test_iso_8601_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "PT", "P", "17 seconds", "PT5X", "T5S"])
def test_bad_durations_are_errors(text):
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_duration(text)


def test_webvid_as_downloaded_multi_column_paths_and_durations(tmp_path, caplog):
    """WebVid's results_*.csv: videoid,contentUrl,duration,page_dir,name; the downloader stores {page_dir}/{videoid}.mp4."""
    p = tmp_path / "results_2M_val.csv"
    p.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        '1053841541,https://x/1053841541.mp4,PT00H00M17S,006001_006050,"Aerial shot, winter forest"\n'
        "21179416,https://x/21179416.mp4,PT00H00M03S,014901_014950,A cat sleeps\n"
        "5629184,https://x/5629184.mp4,PT00H02M10S,002201_002250,Long clip\n"
        "7,https://x/7.mp4,seventeen,002201_002250,Bad duration\n"
        "8,https://x/8.mp4,PT00H00M09S,,No page dir\n"
    )
    caplog.set_level(logging.INFO)
    skips = SkipCounter(max_bad_fraction=1.0)
    src = CaptionManifest(
        str(p),
        video_root="/data/webvid/videos",
        video_path="{page_dir}/{videoid}.mp4",
        caption_column="name",
        key_column="videoid",
        duration_column="duration",
        min_duration=4,
        max_duration=60,
    )
    recs = src.load(skips)
    assert [(r.key, r.video, r.turns[0][1]) for r in recs] == [
        ("1053841541", "/data/webvid/videos/006001_006050/1053841541.mp4", "Aerial shot, winter forest")
    ]
    assert skips.totals()["skipped/malformed"] == 2 and skips.totals()["skipped"] == 2  # the filter is no skip
    assert f"{p}:5" in caplog.text and "'seventeen' is not an ISO-8601 duration" in caplog.text
    assert "needs columns ['page_dir']" in caplog.text and "2 rows outside the duration range" in caplog.text
    without_range = CaptionManifest(str(p), video_path="{page_dir}/{videoid}.mp4", caption_column="name")
    assert len(without_range.load(SkipCounter(max_bad_fraction=1.0))) == 4  # durations unread, page_dir row skipped
    with pytest.raises(ValueError, match="need duration_column"):
        CaptionManifest(str(p), min_duration=4)


def test_videochat2_instruction_applies_as_videochat2_loader_does(tmp_path):
    items = [
        {
            "video": "a.mp4",
            "QA": [
                {"i": "Watch the video and answer.", "q": "What falls?", "a": "a cup"},
                {"i": "Ignored: only the first item's instruction is used.", "q": "Then?", "a": "it breaks"},
            ],
        },
        {"video": "b.mp4", "QA": [{"i": "", "q": "", "a": "A dog runs across a field."}]},
    ]
    (tmp_path / "it.json").write_text(json.dumps(items))
    first, caption = VideoChat2Instructions(str(tmp_path / "it.json")).load(SkipCounter())
    assert first.system == "Watch the video and answer." and first.turns == [
        ("What falls?", "a cup"),
        ("Then?", "it breaks"),
    ]
    assert first.qformer_text == "Watch the video and answer. What falls?"
    assert caption.system is None and caption.turns == [("", "A dog runs across a field.")]


def test_videochat2_instruction_is_the_system_prompt_of_the_collated_sample(assets):
    tok_path = str(assets / "tokenizer")
    collator = Collator(tok_path, use_chat_template=False)
    sample = {
        "key": "k",
        "video": torch.zeros(2, 3, 8, 8),
        "frame_mask": torch.ones(2, dtype=torch.bool),
        "turns": [("What colour is it?", "red")],
        "qformer_text": "",
        "system": "Answer briefly.",
    }
    text = collator.tok.decode(collator([sample])["input_ids"][0])
    assert text.index("Answer briefly.") < text.index(VIDEO_TOKEN) < text.index("What colour is it?")
    caption = dict(sample, turns=[("", "a red square moves right")], system=None)
    ids = collator([caption])["input_ids"][0].tolist()
    assert ids.count(collator.video_token_id) == 1 and "Answer briefly." not in collator.tok.decode(ids)


def test_videochat2_start_end_is_a_window_of_the_clip(tmp_path, assets):
    items = [
        {"video": "clip03.mp4", "start": 0.5, "end": 0.9, "QA": [{"q": "What moves?", "a": "a square"}]},
        {"video": "clip03.mp4", "QA": [{"q": "What moves?", "a": "a square"}]},
        {"video": "clip03.mp4", "start": 0.5, "QA": [{"q": "only a start", "a": "x"}]},
        {"video": "clip03.mp4", "start": 0.9, "end": 0.5, "QA": [{"q": "end before start", "a": "x"}]},
    ]
    (tmp_path / "it.jsonl").write_text("\n".join(json.dumps(x) for x in items))
    skips = SkipCounter(max_bad_fraction=1.0)
    window, whole = VideoChat2Instructions(str(tmp_path / "it.jsonl"), video_root=str(assets / "videos")).load(skips)
    assert skips.totals()["skipped/malformed"] == 2
    assert (window.start_sec, window.end_sec, window.key) == (0.5, 0.9, "clip03@0.5-0.9") and whole.key == "clip03"
    loader = ClipLoader(VideoTransform(32), num_frames=4, sampling="uniform")
    t_window, t_whole = loader.read(window).timestamps, loader.read(whole).timestamps
    assert bool(((t_window >= 0.5) & (t_window < 0.9)).all()) and float(t_whole.min()) < 0.3


@pytest.fixture
def mixed(tmp_path, assets):
    """A LLaVA-OneVision-style mixture: video items, image items (`<image>` placeholder) and a text-only item."""
    image = torch.zeros(24, 40, 3, dtype=torch.uint8)
    image[4:12, 8:20, 0] = 255
    Image.fromarray(image.numpy()).save(tmp_path / "red.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    shutil.copy(assets / "videos" / "clip01.mp4", tmp_path / "clip01.mp4")
    items = [
        {"id": "v1", "video": "clip01.mp4", "conversations": llava_turn("<video>\nWhat colour is it?", "red")},
        {"id": "i1", "image": "red.png", "conversations": llava_turn("<image>\nWhat colour is it?", "red")},
        {"id": "i2", "image": "bad.png", "conversations": llava_turn("<image>\nWhat colour is it?", "red")},
        {"id": "t1", "conversations": llava_turn("What colour is a ripe tomato?", "red")},
        {"id": "t2", "conversations": llava_turn("<image>\nNo image here?", "none")},
        {"id": "m1", "image": ["a.png", "b.png"], "conversations": llava_turn("<image>\n<image>\nSame?", "yes")},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(items))
    return tmp_path / "mix.json"


def test_image_items_load_beside_video_items_with_per_modality_counts(mixed, caplog):
    caplog.set_level(logging.INFO)
    skips = SkipCounter(max_bad_fraction=1.0)
    recs = LlavaInstructions(str(mixed)).load(skips)
    assert [(r.key, r.modality) for r in recs] == [("v1", "video"), ("i1", "image"), ("i2", "image")]
    assert recs[1].turns[0][0] == "<video>\nWhat colour is it?" and recs[1].qformer_text == "What colour is it?"
    assert skips.totals()["skipped/malformed"] == 2  # the two-image item and the text item with a placeholder
    assert "several per item are not supported" in caplog.text and "placeholders in a text item" in caplog.text
    assert "1 video, 2 image, 1 text-only items (1 skipped: text_only='skip')" in caplog.text
    trained = LlavaInstructions(str(mixed), text_only="train").load(SkipCounter(max_bad_fraction=1.0))
    assert [r.modality for r in trained] == ["video", "image", "image", "text"]
    with pytest.raises(ValueError, match="text_only must be"):
        LlavaInstructions(str(mixed), text_only="drop").load(SkipCounter())


@pytest.mark.parametrize("image_frames", [1, 3])
def test_mixed_file_batches_images_as_clips_and_text_without_placeholder(mixed, assets, caplog, image_frames):
    caplog.set_level(logging.INFO)
    dm = InstructionDataModule(
        train=LlavaInstructions(str(mixed), text_only="train"),
        val=LlavaInstructions(str(mixed)),
        test=LlavaInstructions(str(mixed)),
        tokenizer=str(assets / "tokenizer"),
        num_frames=4,
        batch_size=4,
        num_workers=0,
        train_sampling="uniform",
        max_bad_fraction=1.0,
        image_frames=image_frames,
    )
    dm.setup("fit")
    dm.configure_preprocess(32, (0.5,) * 3, (0.5,) * 3)
    assert "train: 4 records from LlavaInstructions (video 1, image 2, text 1)" in caplog.text
    batch = next(iter(dm.train_dataloader()))  # bad.png is skipped and replaced by the next record
    assert batch["keys"] == ["v1", "i1", "t1", "t1"] and dm.skip_counts()["skipped/decode_error"] == 1
    assert batch["frame_mask"][1].tolist() == [True] * image_frames + [False] * (4 - image_frames)
    image = batch["video"][1]
    assert torch.equal(image[0], image[image_frames - 1]) and image[0, 0].mean() > image[0, 1].mean()  # red
    placeholders = (batch["input_ids"] == dm.collator().video_token_id).sum(1).tolist()
    assert placeholders == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="image_frames must be in"):
        ClipLoader(VideoTransform(32), num_frames=4, image_frames=5)


def test_frame_lists_are_sampled_like_uniform_clips():
    from data_modules.video import frames_clip

    frames = [Image.fromarray(np.full((12, 20, 3), 30 * i, np.uint8)) for i in range(8)]
    clip = frames_clip(frames, 4)
    assert clip.timestamps.tolist() == [1.0, 3.0, 5.0, 7.0] and clip.frame_mask.all()
    assert [int(f[0, 0, 0]) for f in clip.frames] == [30, 90, 150, 210] and clip.frames.shape == (4, 3, 12, 20)
    short = frames_clip(frames[:3], 4, short_side=6, pad="zero")
    assert short.frame_mask.tolist() == [True, True, True, False] and short.frames.shape == (4, 3, 6, 10)
    assert int(short.frames[3].max()) == 0
