"""`vrp ask` on a synthetic clip (free-form and multiple choice) and on bad input: one-line errors."""

import numpy as np
import pytest

from data_modules.video import write_video
from vrp.evaluation import inference
from vrp.tools import ask


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.default_rng(0)
    write_video(path, rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=6)
    return str(path)


def test_ask_multiple_choice(reasoner, clip, capsys):
    ask.main(
        [clip, "what colour is the ball ?", "--options", "red|blue ball|green", "--num-frames", "2"],
        loader=lambda _: reasoner,
    )
    out, err = capsys.readouterr()
    assert out.strip() in ("red", "blue ball", "green")
    assert len(err.strip().splitlines()) == 3  # one score per option


def test_ask_free_form(reasoner, clip, capsys):
    ask.main([clip, "what moves next ?", "--num-frames", "2", "--max-new-tokens", "3"], loader=lambda _: reasoner)
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.parametrize(
    "make_args,match",
    [
        (lambda d, clip: [str(d / "missing.mp4"), "q ?"], "does not exist"),
        (lambda d, clip: [str(d / "bad.mp4"), "q ?"], "cannot read video"),
        (lambda d, clip: [clip, "q ?", "--options", "red"], "at least two"),
    ],
)
def test_ask_bad_input_gives_one_line(reasoner, clip, tmp_path, capsys, make_args, match):
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video")
    with pytest.raises(SystemExit) as e:
        ask.main(make_args(tmp_path, clip), loader=lambda _: reasoner)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and match in err and len(err.strip().splitlines()) == 1


def test_ask_bad_checkpoint(clip, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ask.main([clip, "q ?", "--checkpoint", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and len(err.strip().splitlines()) == 1


def _boxes_file(path, key, frames=6):
    import json

    box = [0.1, 0.2, 0.5, 0.6]
    path.write_text(json.dumps({key: {"objects": ["red circle"], "boxes": [[box] for _ in range(frames)]}}))
    return str(path)


def test_ask_reads_boxes_for_the_clip(reasoner, clip, tmp_path):
    batch = inference.make_batch(
        reasoner, clip, "q ?", None, num_frames=2, boxes=_boxes_file(tmp_path / "b.json", "clip")
    )
    assert batch["boxes"].shape == (1, 2, 1, 4) and batch["box_mask"].all()
    assert batch["boxes"][0, 0, 0].tolist() == pytest.approx([0.1, 0.2, 0.5, 0.6], abs=1e-6)


@pytest.mark.parametrize("content,match", [("other", "no entry 'clip'"), (None, "does not exist")])
def test_ask_bad_boxes_give_one_line(reasoner, clip, tmp_path, capsys, content, match):
    path = _boxes_file(tmp_path / "b.json", content) if content else str(tmp_path / "none.json")
    with pytest.raises(SystemExit) as e:
        ask.main([clip, "q ?", "--boxes", path, "--num-frames", "2"], loader=lambda _: reasoner)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("options", [None, "red|blue"])
def test_ask_refuses_a_question_longer_than_the_llm(reasoner, clip, capsys, options):
    question = "what colour is the ball ? " * 60  # 360 tokens; the tiny LLM has 256 positions
    argv = [clip, question, "--num-frames", "2"] + (["--options", options] if options else [])
    with pytest.raises(SystemExit) as e:
        ask.main(argv, loader=lambda _: reasoner)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the question does not fit: the input is ") and "\n" not in err
    assert "max_position_embeddings=256; shorten it" in err


def _track_reasoner(reasoner, tmp_path, score_threshold: float):
    """A tiny VideoReasoner whose fusion reads tracks and whose object stage is a (random) CenterNet saved by path:
    the embedded default's shape."""
    from functools import partial

    from vrp.models.detection import CenterDetector, CenterNet
    from vrp.models.tracking import ObjectStage
    from vrp.models.tracks import TrackFusion

    net = CenterNet(image_size=32, width=8, dilations=(1,), score_threshold=score_threshold, max_detections=2)
    for head, bias in ((net.heatmap, 5.0), (net.size, 4.0), (net.offset, 0.0)):  # sure 4-cell boxes, same each frame
        head.weight.data.zero_()
        head.bias.data.fill_(bias)
    net.save_pretrained(tmp_path / "detector")
    stage = ObjectStage(CenterDetector(str(tmp_path / "detector")), max_objects=3, short_side=32)
    fusion = partial(
        TrackFusion, max_objects=3, num_frames=2, hidden_size=16, num_heads=2, intermediate_size=32, box_substeps=2
    )
    from vrp.models.reasoner import VideoReasoner

    return VideoReasoner(reasoner.vision, fusion, reasoner.llm, objects=stage).eval()


def test_ask_without_boxes_runs_the_object_stage(reasoner, clip, tmp_path, capsys):
    model = _track_reasoner(reasoner, tmp_path, score_threshold=0.5)
    batch = inference.make_batch(model, clip, "what colour is the ball ?", None, num_frames=2)
    assert batch["boxes"].shape[:2] == (1, 4) and batch["boxes"].shape[2] in (1, 2)  # T * box_substeps rows
    assert batch["box_mask"].all()  # the same boxes in every frame: one track each, seen in every row
    ask.main([clip, "what colour is the ball ?", "--options", "red|blue", "--num-frames", "2"], loader=lambda _: model)
    out = capsys.readouterr()
    assert out.out.strip() in ("red", "blue") and "note:" not in out.err


def test_ask_when_the_detector_finds_nothing_answers_with_a_note(reasoner, clip, tmp_path, capsys):
    model = _track_reasoner(reasoner, tmp_path, score_threshold=1.01)  # nothing passes
    ask.main([clip, "what colour is the ball ?", "--options", "red|blue", "--num-frames", "2"], loader=lambda _: model)
    out = capsys.readouterr()
    assert out.out.strip() in ("red", "blue")
    assert f"note: the object stage found no object in {clip}" in out.err


@pytest.mark.parametrize("shape", [(1, 18, 34), (3, 18, 34), (2, 40, 24)], ids=["one_frame", "34x18", "portrait"])
def test_ask_without_boxes_on_odd_videos(reasoner, tmp_path, capsys, shape):
    frames, h, w = shape
    path = tmp_path / "odd.mp4"
    write_video(path, np.random.default_rng(1).integers(0, 255, (frames, h, w, 3), dtype=np.uint8), fps=5)
    model = _track_reasoner(reasoner, tmp_path, score_threshold=0.5)
    batch = inference.make_batch(model, str(path), "what colour is the ball ?", None, num_frames=2)
    assert batch["box_mask"].any()  # objects found even in a single frame
    ask.main(
        [str(path), "what colour is the ball ?", "--options", "red|blue", "--num-frames", "2"], loader=lambda _: model
    )
    assert capsys.readouterr().out.strip() in ("red", "blue")
