"""lmms-eval round trip: a local task over the synthetic test `mc.csv` scores an exported model through
`python -m lmms_eval --model vrp`, and its accuracy equals `vrp test` on the same questions (same scorer).

Runs where lmms-eval is importable: its own venv (`make test-lmms`), since lmms-eval 0.7.3 pins av<16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from tiny_assets import TINY_LLM, TINY_QFORMER, TINY_VIT, frame_qformer, reasoner, stage_config, synthetic_data

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here: run `make test-lmms` (its venv)")

from vrp.cli import main  # noqa: E402

pytestmark = pytest.mark.slow  # about 30 s: data, two training steps, export, vrp test, lmms-eval


def _config(root: Path, synthetic: Path, run: Path) -> Path:
    """The embedded stage-2 recipe (frozen ViT, full LLM) at toy size with a Q-Former fusion, two steps."""
    qformer = replace(
        TINY_QFORMER, num_query_tokens=4, cross_attention_freq=1, num_frames=4, vocab_size=1024, init_std=0.1
    )
    overlay = {
        "trainer": {"logger": False},
        "results": {"dir": str(run)},
        "data": {"init_args": {"num_frames": 4, "eval_batch_size": 8}},
    }
    fusion = reasoner({"fusion": frame_qformer(qformer), "objects": None})
    return stage_config(run, root, synthetic_data(synthetic), overlay, fusion)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic data, the tiny embedded backbones (python -m lab prepare), two steps of `vrp fit`, `vrp export`, `vrp test`."""
    from lab.prepare import save_random_backbones
    from lab.synthetic import generate

    tmp = tmp_path_factory.mktemp("lmms")
    synthetic = tmp / "synthetic"
    generate(synthetic, videos=100, seed=0, size=64, min_frames=8, max_frames=12)  # 32 test questions
    llm = {**TINY_LLM, "max_position_embeddings": 256}
    root = save_random_backbones(str(synthetic / "tokenizer"), tmp / "embedded", vit=TINY_VIT, llm=llm)
    config = _config(root, synthetic, tmp / "run")
    main(["fit", "--config", str(config)])
    ckpt = tmp / "run" / "ckpt" / "last.ckpt"
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp / "exported")])
    main(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    return tmp, json.loads((tmp / "run" / "test_results.json").read_text())


def test_lmms_eval_scores_the_exported_model_as_vrp_test_does(trained):
    tmp, vrp_results = trained
    main(["lmms-task", "--mc", str(tmp / "synthetic" / "test" / "mc.csv"), "--out", str(tmp / "task")])
    env = {
        **os.environ,
        "HF_HOME": str(tmp / "hf"),
        "HF_DATASETS_CACHE": str(tmp / "hf" / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_eval",
            "--model",
            "vrp",
            "--model_args",
            f"checkpoint={tmp / 'exported'},num_frames=4",
            "--tasks",
            "vrp_mc",
            "--include_path",
            str(tmp / "task"),
            "--batch_size",
            "1",
            "--device",
            "cpu",
            "--output_path",
            str(tmp / "lmms_out"),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = list((tmp / "lmms_out").rglob("*_results.json"))
    lmms_acc = 100.0 * json.loads(results.read_text())["results"]["vrp_mc"]["acc,none"]
    n = vrp_results["counts"]["overall"]
    print(f"\nlmms-eval acc {lmms_acc:.2f} vs vrp test {vrp_results['accuracy']['overall']:.2f} on {n} questions")
    assert lmms_acc == pytest.approx(vrp_results["accuracy"]["overall"], abs=1e-6)
    # question by question: lmms-eval's per-option mean NLL is vrp's length-normalised score with its sign flipped
    (samples,) = list((tmp / "lmms_out").rglob("*_samples_vrp_mc.jsonl"))
    docs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda d: d["doc_id"])
    assert len(docs) == n  # doc i is the i-th question of the task file, written in `vrp test`'s order
    for d, row in zip(docs, vrp_results["rows"]):
        nll = [float(r[0]) for r in d["filtered_resps"]]
        assert [-x for x in nll] == pytest.approx(row["scores"], abs=2e-4)
        assert min(range(len(nll)), key=nll.__getitem__) == row["prediction"] and int(d["target"]) == row["answer"]


def test_lmms_task_writes_the_questions_vrp_test_asks(trained):
    tmp, vrp_results = trained
    main(
        ["lmms-task", "--mc", str(tmp / "synthetic" / "test" / "mc.csv"), "--out", str(tmp / "task2"), "--name", "mine"]
    )
    task = yaml.safe_load((tmp / "task2" / "mine.yaml").read_text())
    assert task["output_type"] == "multiple_choice" and task["target_delimiter"] == ""
    docs = [json.loads(x) for x in (tmp / "task2" / "mine.jsonl").read_text().splitlines()]
    assert [d["key"] for d in docs] == [r["key"] for r in vrp_results["rows"]]
    assert all(Path(d["video"]).is_file() and "<video>" not in d["question"] for d in docs)


def test_generate_until_answers_as_vrp_ask_does_and_reads_pil_images(trained):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from vrp.evaluation.inference import answer, make_batch
    from vrp.evaluation.lmms import VRP, cut_at
    from vrp.models.io import load_exported

    tmp, _ = trained
    video = str(sorted((tmp / "synthetic" / "test" / "videos").glob("*.mp4"))[0])
    docs = [{"video": video}, {"image": Image.new("RGB", (40, 24), (255, 0, 0))}]
    lm = VRP(checkpoint=str(tmp / "exported"), num_frames=4, max_new_tokens=6, device="cpu")
    lm.task_dict = {"t": {"test": docs}}
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    requests = [
        Instance(
            "generate_until",
            ("How many objects are there?", {"until": ["\n\n"]}, lambda d: [d["video"]], 0, "t", "test"),
            idx=0,
            metadata=meta,
        ),
        Instance(
            "generate_until",
            ("What colour is it?", {"max_new_tokens": 3}, lambda d: [d["image"]], 1, "t", "test"),
            idx=0,
            metadata=meta,
        ),
    ]
    got = lm.generate_until(requests)
    model = load_exported(tmp / "exported")
    expected, _ = answer(
        model, make_batch(model, video, "How many objects are there?", None, num_frames=4), max_new_tokens=6
    )
    assert got[0] == cut_at(expected, ["\n\n"]) and isinstance(got[1], str)
    assert lm.generate_until(requests[:1]) == got[:1]  # the second request's max_new_tokens=3 did not stick
    assert cut_at("A. red\n\nB", ["\n\n", "B"]) == "A. red" and cut_at("red", None) == "red"
    frames = [Image.new("RGB", (40, 24), (0, 0, 40 * i)) for i in range(6)]  # MVBench's frame subsets: a frame list
    sample = lm.visual_sample(frames, "Which way?", "t/test/2")
    assert sample["frame_mask"].tolist() == [True] * 4 and sample["video"].shape[:2] == (4, 3)
    assert lm.visual_sample(frames[:2], "Which way?", "t/test/3")["frame_mask"].tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="cannot read frame"):
        lm.visual_sample([video, video], "q", "t/test/4")  # two videos are no frame list
