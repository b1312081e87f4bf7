"""`vrp predict` writes the model's answer for every sample of a split as JSON lines: the chosen option and the
per-option scores for multiple choice, generated text for open questions, and the samples it could not read."""

from __future__ import annotations

import json

import yaml
from tiny_assets import mc_data, toy_config

from vrp.cli import cli


def predict(config, tiny_root, data: dict, *extra: str) -> list[dict]:
    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = data
    cfg["data"]["init_args"]["tokenizer"] = str(tiny_root / "tokenizer")
    config.write_text(yaml.safe_dump(cfg))
    cli(["predict", "--config", str(config), *extra])
    return [json.loads(line) for line in (config.parent / "predict" / "version_0" / "predictions.jsonl").open()]


def test_predict_writes_multiple_choice_answers_and_skips(tiny_root, tmp_path):
    rows = predict(toy_config(tiny_root, tmp_path / "run"), tiny_root, mc_data(tmp_path / "mc", missing="clip1"))
    assert sorted(r["key"] for r in rows) == ["clip0_q0", "clip1_q1", "clip2_q2", "clip3_q3"]
    skipped = [r for r in rows if "skipped" in r]
    assert skipped == [{"key": "clip1_q1", "skipped": "missing_file"}]
    for r in rows:
        if "skipped" not in r:
            assert set(r) == {"key", "type", "prompt", "choice", "option", "scores", "answer"}
            assert r["option"] == ["red", "green"][r["choice"]] and len(r["scores"]) == 2
            assert r["choice"] == max(range(2), key=lambda i: r["scores"][i]) and r["type"] == "descriptive"


def test_predict_generates_for_open_questions(tiny_root, tmp_path):
    data = mc_data(tmp_path / "mc", missing="")
    items = [
        {
            "id": f"open{i}",
            "video": f"clip{i}.mp4",
            "conversations": [
                {"from": "human", "value": "<video>\nwhat colour is it ?"},
                {"from": "gpt", "value": "red"},
            ],
        }
        for i in range(3)
    ]
    (tmp_path / "mc" / "open.json").write_text(json.dumps(items))
    data["init_args"]["predict"] = {
        "class_path": "data_modules.sources.LlavaInstructions",
        "init_args": {"path": str(tmp_path / "mc" / "open.json")},
    }
    rows = predict(toy_config(tiny_root, tmp_path / "run"), tiny_root, data, "--model.init_args.max_new_tokens=3")
    assert [r["key"] for r in rows] == ["open0", "open1", "open2"]
    assert all(isinstance(r["generated"], str) and "choice" not in r for r in rows)


def test_junk_box_entries_are_counted_skips_naming_the_fault(tiny_root, tmp_path, caplog):
    """boxes.json with a string entry, an all-NaN one and one outside the frame: those clips' samples are skipped as
    bad_boxes (logged with the file, key, frame and object), the others answered; the run does not stop."""
    data = mc_data(tmp_path / "mc", missing="")
    good = [[[0.1, 0.1, 0.5, 0.5]] for _ in range(4)]
    entries = {
        "clip0": {"objects": ["red circle"], "boxes": good},
        "clip1": "junk",
        "clip2": {"objects": ["red circle"], "boxes": [[[float("nan")] * 4] for _ in range(4)]},
        "clip3": {"objects": ["red circle"], "boxes": [[[0.1, 0.1, 1.5, 0.5]]] + good[1:]},
    }
    boxes = tmp_path / "mc" / "boxes.json"
    boxes.write_text(json.dumps(entries))  # NaN as JSON's NaN, as Python writes it
    for split in ("train", "val", "test"):
        data["init_args"][split]["init_args"]["boxes"] = str(boxes)
    rows = predict(toy_config(tiny_root, tmp_path / "run"), tiny_root, data)
    skipped = {r["key"]: r.get("skipped") for r in rows}
    assert skipped == {"clip0_q0": None, "clip1_q1": "bad_boxes", "clip2_q2": "bad_boxes", "clip3_q3": "bad_boxes"}
    assert f"{boxes}: refused 3 of 4 entries" in caplog.text
    assert f"entry 'clip1' of {boxes} was refused: malformed" in caplog.text
    assert (
        "entry 'clip2' of" in caplog.text
        and "non-finite coordinates [nan, nan, nan, nan] at frame 0, object 0" in caplog.text
    )
    assert (
        "coordinates [0.10000000149011612, 0.10000000149011612, 1.5, 0.5] outside [0, 1] at frame 0, object 0"
        in caplog.text
    )
