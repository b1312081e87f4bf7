"""`vrp lmms-task --mc CSV --out DIR`: an lmms-eval task over a local NExT-QA-layout CSV (the synthetic `mc.csv`,
or any file `MultipleChoice` reads), for `python -m lmms_eval --model vrp ... --include_path DIR --tasks NAME`.

The CSV is read by `MultipleChoice` with the arguments given here (the same defaults as the stage-2 datamodule's
synthetic test split), so the task asks exactly the questions `vrp test` asks, with the same prompts and options:

<out>/<name>.jsonl   one document per question: video (absolute path), question (the prompt, placeholder removed),
                     options, answer (index), type, key
<out>/<name>.yaml    output_type multiple_choice over it (doc_to_choice: options, no target delimiter), metric acc
Needs no lmms-eval itself; the task runs in the lmms-eval venv (`make lmms-env`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from data_modules.skips import SkipCounter
from data_modules.sources.multiple_choice import MultipleChoice
from data_modules.sources.record import strip_placeholder


def write_task(mc: MultipleChoice, out: str | Path, *, name: str = "vrp_mc") -> Path:
    """Write the documents and the task YAML of ``mc``'s questions; returns the YAML's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = mc.load(SkipCounter(max_bad_fraction=1.0))
    if not records:
        raise ValueError(f"{mc.path}: no usable question; see the skip log")
    docs = out / f"{name}.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for r in records:
            f.write(
                json.dumps(
                    {
                        "key": r.key,
                        "video": str(Path(r.video).resolve()),
                        "question": strip_placeholder(r.turns[0][0]),
                        "options": r.options,
                        "answer": r.answer_index,
                        "type": r.question_type or "all",
                    }
                )
                + "\n"
            )
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_visual": "video",
        "doc_to_text": "question",
        "doc_to_choice": "options",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "source": str(Path(mc.path).resolve())},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    from data_modules.datamodules import DEFAULT_MC_TEMPLATE

    p = argparse.ArgumentParser(prog="vrp lmms-task", description=__doc__.splitlines()[0])
    p.add_argument("--mc", required=True, help="NExT-QA-layout CSV (e.g. data/synthetic/test/mc.csv)")
    p.add_argument("--out", required=True, help="folder for the task (pass it to lmms-eval's --include_path)")
    p.add_argument("--name", default="vrp_mc", help="the task's name (lmms-eval --tasks NAME)")
    p.add_argument("--template", default=DEFAULT_MC_TEMPLATE, help="prompt template, as MultipleChoice's")
    p.add_argument("--video-root", help="folder the video paths are relative to (default: the CSV's)")
    p.add_argument("--video-path", default="videos/{video}.mp4", help="video file per `video` value")
    p.add_argument("--video-map", help="JSON map of video ids to paths (NExT-QA's map_vid_vidorID.json)")
    a = p.parse_args(argv)
    if not Path(a.mc).is_file():
        raise SystemExit(f"error: {a.mc} does not exist")
    mc = MultipleChoice(
        a.mc,
        video_root=a.video_root,
        video_path=a.video_path,
        video_map=a.video_map,
        template=a.template,
        target="text",
    )
    path = write_task(mc, a.out, name=a.name)
    print(
        f"wrote {path}; run: python -m lmms_eval --model vrp --model_args checkpoint=DIR "
        f"--include_path {path.parent} --tasks {a.name}"
    )
