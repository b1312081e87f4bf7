"""Synthetic benchmark: determinism, labels against the simulator, blind balance, output formats, tokenizer."""

from __future__ import annotations

import csv
import json
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lab.synthetic import generate
from lab.synthetic.questions import WALL
from lab.synthetic.simulator import Obj, Scene, simulate
from lab.synthetic.writer import HORIZON, SPLITS, VideoJob, draw_scene

KW = dict(size=64, min_frames=12, max_frames=16, vocab_size=512)
VIDEOS = 40


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "a"
    generate(out, VIDEOS, seed=3, workers=2, **KW)
    return out


def _items(root: Path, split: str) -> list[dict]:
    return json.loads((root / split / "instructions.json").read_text())


def test_deterministic_and_independent_of_workers(bench, tmp_path):
    other = tmp_path / "b"
    generate(other, VIDEOS, seed=3, workers=1, **KW)
    for split in SPLITS:
        for name in ("instructions.json", "mc.csv", "boxes.json", "captions.csv"):
            assert (bench / split / name).read_bytes() == (other / split / name).read_bytes(), (split, name)
        for video in sorted((bench / split / "videos").iterdir()):
            assert video.read_bytes() == (other / split / "videos" / video.name).read_bytes(), video.name
    assert json.loads((bench / "meta.json").read_text()) == json.loads((other / "meta.json").read_text())
    generate(tmp_path / "c", VIDEOS, seed=4, workers=1, **KW)
    assert (tmp_path / "c" / "train" / "mc.csv").read_bytes() != (bench / "train" / "mc.csv").read_bytes()


def test_more_train_videos_keep_the_val_and_test_questions(bench, tmp_path):
    more = generate(tmp_path / "more", VIDEOS, seed=3, workers=1, train_videos=48, **KW)
    assert more["counts"]["train"]["videos"] == 48 and more["config"]["train_videos"] == 48
    for split in ("val", "test"):
        for name in ("instructions.json", "mc.csv", "boxes.json"):
            assert (bench / split / name).read_bytes() == (tmp_path / "more" / split / name).read_bytes(), (split, name)
    assert len(_items(tmp_path / "more", "train")) > len(_items(bench, "train"))
    with pytest.raises(ValueError, match="train_videos"):
        generate(tmp_path / "none", VIDEOS, seed=3, workers=1, train_videos=0, **KW)


def _resimulate(key: str):
    split, index = key.rsplit("_", 1)
    job = VideoJob(split, int(index), 3, "", KW["size"], KW["min_frames"], KW["max_frames"], 2, 5)
    _, scene, observed = draw_scene(job)
    return scene, simulate(scene, observed + HORIZON), observed


def _names(question: str) -> list[str]:
    return re.findall(r"the (\w+ (?:circle|square|triangle|cross))", question)


def _hit(names: list[str], e, i: int) -> str:
    p = e.partner(i)
    return WALL if p == "wall" else names[p]


def test_labels_match_the_simulator(bench):
    checked = Counter()
    for split in SPLITS:
        for it in _items(bench, split):
            scene, traj, observed = _resimulate(it["id"].rsplit("_", 1)[0])
            names = [o.name for o in scene.objects]
            answer = it["options"][it["answer_index"]]
            assert it["conversations"][1]["value"] == answer
            mentioned = [names.index(n) for n in _names(it["conversations"][0]["value"])]
            t = it["template"]
            if t == "count":
                assert answer == ["two", "three", "four", "five"][len(names) - 2]
            elif t == "next_hit":
                (x,) = mentioned
                nxt = [e for e in traj.events if e.involves(x) and e.frame >= observed]
                assert nxt and nxt[0].frame >= observed, "predictive event must happen after the clip"
                assert all(e.frame < observed or not e.involves(x) for e in traj.events if e.frame < observed)
                assert _hit(names, nxt[0], x) == answer
            elif t in ("first_hit", "last_hit"):
                (x,) = mentioned
                ev = [e for e in traj.events if e.involves(x) and e.frame < observed]
                assert _hit(names, ev[0 if t == "first_hit" else -1], x) == answer
            elif t == "why_turn":
                (x,) = mentioned
                (e,) = [e for e in traj.events if e.involves(x) and e.frame < observed]
                assert answer == ("it hit a wall" if e.is_wall else f"it hit the {_hit(names, e, x)}")
            elif t == "first_wall":
                first = next(e for e in traj.events if e.is_wall)
                assert names[first.a] == answer
            elif t == "cf_first_hit":
                z, x = mentioned
                fact = [e for e in traj.events if e.involves(x) and e.frame < observed]
                rest = [j for j in range(len(names)) if j != z]
                cf = simulate(scene.without(z), observed)
                counter = [e for e in cf.events if e.involves(rest.index(x))]
                assert _hit([names[j] for j in rest], counter[0], rest.index(x)) == answer
                assert not fact or _hit(names, fact[0], x) != answer, "counterfactual must change the answer"
            elif t == "cf_prevent":
                a, b = mentioned
                z = names.index(answer)
                assert any({e.a, e.other} == {a, b} for e in traj.events if e.frame < observed)
                cf = simulate(scene.without(z), observed)
                ca, cb = a - (a > z), b - (b > z)
                assert not any({e.a, e.other} == {ca, cb} for e in cf.events)
            else:
                continue
            checked[t] += 1
    assert {"count", "next_hit", "first_hit"} <= set(checked), checked


def test_counterfactual_candidates_change_the_outcome():
    from lab.synthetic.questions import propose

    seen = 0
    for i in range(12):
        _, scene, observed = draw_scene(VideoJob("train", i, 0, "", 128, 16, 32, 2, 5))
        traj = simulate(scene, observed + HORIZON)
        names = [o.name for o in scene.objects]
        for c in propose(scene, traj, observed, np.random.default_rng(i)):
            if c.template != "cf_first_hit":
                continue
            z, x = (names.index(n) for n in _names(c.question))
            rest = [j for j in range(len(names)) if j != z]
            counter = [e for e in simulate(scene.without(z), observed).events if e.involves(rest.index(x))]
            fact = [e for e in traj.events if e.involves(x) and e.frame < observed]
            assert _hit([names[j] for j in rest], counter[0], rest.index(x)) == c.answer
            assert not fact or _hit(names, fact[0], x) != c.answer
            seen += 1
    assert seen >= 3


def test_answers_and_letters_are_balanced(bench):
    for split in SPLITS:
        items = _items(bench, split)
        by_template = defaultdict(list)
        for it in items:
            by_template[it["template"]].append(it)
        for t, its in by_template.items():
            n = len(its[0]["options"])
            assert all(len(it["options"]) == n and len(set(it["options"])) == n for it in its)
            letters = Counter(it["answer_index"] for it in its)
            assert max(letters.values()) - min(letters.get(j, 0) for j in range(n)) <= 1, (split, t, letters)
            answers = Counter(it["options"][it["answer_index"]] for it in its)
            assert max(answers.values()) <= len(its) / n + 1e-9, (split, t, answers)
            if t in ("count", "shape"):  # closed 4-word vocabularies: every option is shown every time
                assert len(set(answers.values())) == 1, (split, t, answers)
    meta = json.loads((bench / "meta.json").read_text())
    assert set(meta["baselines"]) == {"val", "test"}


@pytest.mark.slow
def test_blind_baselines_stay_near_chance(tmp_path):
    meta = generate(tmp_path / "big", 400, seed=0, workers=2, **KW)
    for split, table in meta["baselines"].items():
        for t, row in table.items():
            if row["count"] >= 40:
                assert row["best_text_prior"] <= row["chance"] + 0.12, (split, t, row)


def test_formats_parse(bench):
    from data_modules.video import read_video

    boxes = json.loads((bench / "train" / "boxes.json").read_text())
    for split in SPLITS:
        root = bench / split
        rows = list(csv.DictReader(open(root / "captions.csv")))
        assert rows and set(rows[0]) == {"videoid", "contentUrl", "duration", "page_dir", "name"}
        assert all((root / r["contentUrl"]).is_file() and r["name"] for r in rows)
        reader = csv.DictReader(open(root / "mc.csv"))
        mc = list(reader)
        assert mc or split != "train"  # tiny held-out splits may have too few candidates to balance any template
        assert reader.fieldnames == ["video", "question", "answer", "a0", "a1", "a2", "a3", "a4", "qid", "type"]
        for r in mc:
            assert (root / "videos" / f"{r['video']}.mp4").is_file()
            assert r[f"a{r['answer']}"] and r["type"] in (
                "descriptive",
                "temporal",
                "explanatory",
                "predictive",
                "counterfactual",
            )
        for it in _items(bench, split):
            assert it["conversations"][0]["value"].startswith("<video>\n") and (root / it["video"]).is_file()
        shards = sorted((root / "shards").glob("*.tar"))
        assert shards[0].name == f"{split}-000000.tar"
        with tarfile.open(shards[0]) as tar:
            assert {Path(n).suffix for n in tar.getnames()} == {".mp4", ".json"}
        samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
        assert len(samples) == len(rows)
        meta = json.loads(samples[0]["json"])
        assert meta["key"] == samples[0]["__key__"] and meta["caption"] == meta["captions"][0]
        assert 1 <= len(meta["captions"]) <= 3
    key = rows_key = next(iter(boxes))
    clip = read_video(bench / "train" / "videos" / f"{rows_key}.mp4", num_frames=4)
    assert clip.frames.shape[1:] == (3, KW["size"], KW["size"])
    b = np.array(boxes[key]["boxes"], dtype=float)
    assert b.shape[1:] == (len(boxes[key]["objects"]), 4) and KW["min_frames"] <= b.shape[0] <= KW["max_frames"]
    assert (b >= 0).all() and (b <= 1).all() and (b[..., 2:] > b[..., :2]).all()


def test_tokenizer_loads_and_round_trips(bench):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bench / "tokenizer")
    assert len(tok) <= 2048
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    video_id = tok.convert_tokens_to_ids("<video>")
    assert video_id != tok.unk_token_id
    text = "<video>\nWhat did the red circle hit first? Ärger 42"
    ids = tok(text)["input_ids"]
    assert ids[0] == video_id and ids.count(video_id) == 1
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "<video>\nhi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.startswith("<s>") and chat.endswith("assistant: ")


def test_simulator_collisions_are_elastic_and_logged():
    a = Obj("red", "circle", 5.0, (20.0, 30.0), (2.0, 0.0))
    b = Obj("blue", "square", 5.0, (40.0, 30.0), (-1.0, 0.0))
    scene = Scene((a, b), 64)
    traj = simulate(scene, 20)
    hit = [e for e in traj.events if not e.is_wall]
    assert hit and (hit[0].a, hit[0].other) == (0, 1) and 3 <= hit[0].frame <= 5
    speed2 = (traj.velocities**2).sum(axis=(1, 2))
    np.testing.assert_allclose(speed2, speed2[0])  # kinetic energy
    wall = min(e.frame for e in traj.events if e.is_wall)  # momentum holds until something hits a wall
    np.testing.assert_allclose(traj.velocities[:wall].sum(1), np.tile(traj.velocities[0].sum(0), (wall, 1)), atol=1e-9)
    alone = simulate(scene.without(1), 30)
    assert all(e.is_wall for e in alone.events) and alone.events[0].other == "right"
