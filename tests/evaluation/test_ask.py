"""`vrp ask` on a synthetic clip (free-form and multiple choice) and on bad input: one-line errors."""

import numpy as np
import pytest

from data_modules.video import write_video
from vrp.evaluation import ask


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
    batch = ask.make_batch(reasoner, clip, "q ?", None, num_frames=2, boxes=_boxes_file(tmp_path / "b.json", "clip"))
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
