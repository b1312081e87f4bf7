"""Results tables, zero-shot hold-out source, and the blind / middle-frame baselines."""

import json
from functools import partial

import pytest
import torch

from data_modules.skips import SkipCounter
from data_modules.sources.record import Record
from vrp.evaluation.baselines import BlindFusion, MiddleFrame
from vrp.evaluation.holdout import HoldOutTypes
from vrp.evaluation.results import accuracy_table, comparison_table, load_blind_baseline, markdown_table, write_results
from vrp.models.connectors import MLPConnector, PoolOptions
from vrp.models.contracts import FusionInput, TokenLayout

ROWS = [
    {"key": "a", "type": "descriptive", "prediction": 0, "answer": 0, "num_options": 4},
    {"key": "b", "type": "descriptive", "prediction": 1, "answer": 0, "num_options": 4},
    {"key": "c", "type": "predictive", "prediction": 2, "answer": 2, "num_options": 5},
]


def test_accuracy_table_seen_unseen(tmp_path):
    table = accuracy_table(ROWS, held_out=["predictive"])
    assert table["accuracy"] == {
        "descriptive": 50.0,
        "predictive": 100.0,
        "overall": pytest.approx(200 / 3),
        "seen": 50.0,
        "unseen": 100.0,
    }
    assert table["chance"]["predictive"] == pytest.approx(20.0) and table["counts"]["seen"] == 2
    md = markdown_table(table, blind={"descriptive": 30.0})
    assert "| predictive (held out) | 1 | 100.0 | 20.0 | – |" in md and "| descriptive | 2 | 50.0 | 25.0 | 30.0 |" in md
    both = comparison_table({"model": table, "blind": accuracy_table(ROWS[:1])})
    assert "| descriptive | 50.0 | 100.0 | 25.0 |" in both
    assert "| predictive (held out in model) | 100.0 | – | 20.0 |" in both
    assert "| unseen | 100.0 | – | 20.0 |" in both  # chance from the run that has the row, not nan
    j, m, _ = write_results(tmp_path, ROWS)
    assert json.loads(j.read_text())["rows"][2]["key"] == "c" and m.read_text().startswith("| question type")


def test_load_blind_baseline(tmp_path):
    meta = {"baselines": {"test": {"temporal": {"count": 3, "chance": 0.25, "best_text_prior": 0.3}}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert load_blind_baseline(tmp_path / "meta.json") == {"temporal": pytest.approx(30.0)}
    assert load_blind_baseline(tmp_path / "missing.json") is None


class _Source:
    path = "fixture"

    def load(self, skips):
        return [Record(f"k{i}", "v.mp4", [("q", "a")], question_type=t) for i, t in enumerate(["a", "b", "a", "c"])]


def test_hold_out_types():
    kept = HoldOutTypes(_Source(), held_out=["a"]).load(SkipCounter(0.5))
    assert sorted(r.question_type for r in kept) == ["b", "c"]
    with pytest.raises(ValueError, match="no record has a held-out type"):
        HoldOutTypes(_Source(), held_out=["zzz"]).load(SkipCounter(0.5))


def test_baseline_fusions():
    visual = torch.randn(2, 5, 5, 8)  # (B, T, N, D): 1 CLS + 2x2 grid
    frame_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    blind = BlindFusion(TokenLayout(8, (2, 2), 1), num_output_tokens=3, output_dim=6)
    assert torch.equal(
        blind(FusionInput(visual, frame_mask))[0], blind(FusionInput(torch.zeros_like(visual), frame_mask))[1]
    )
    mid = MiddleFrame(
        TokenLayout(8, (2, 2), 1), fusion=partial(MLPConnector, pool=PoolOptions(temporal_bins=1, spatial_size=(1, 1)))
    )
    assert MiddleFrame.middle_index(frame_mask).tolist() == [2, 1]
    out = mid(FusionInput(visual, frame_mask))
    changed = visual.clone()
    changed[0, [0, 1, 3, 4]] = 0  # only frame 2 of clip 0 matters
    changed[1, 0] = 5
    assert out.shape == (2, mid.num_output_tokens, mid.output_dim)
    torch.testing.assert_close(mid(FusionInput(changed, frame_mask)), out)
    changed[1, 1] += 1  # the middle real frame of clip 1
    assert not torch.allclose(mid(FusionInput(changed, frame_mask))[1], out[1])


NEXTQA_GROUPS = {"causal": ["CW", "CH"], "temporal": ["TN", "TC", "TP"], "descriptive": ["DC", "DL", "DO"]}


def _row(key, code, correct, options=5):
    return {"key": key, "type": code, "prediction": 0 if correct else 1, "answer": 0, "num_options": options}


NEXTQA_ROWS = [
    _row("1", "CW", True),
    _row("2", "CW", False),
    _row("3", "CH", True),
    _row("4", "TN", True),
    _row("5", "TC", False),
    _row("6", "DC", True),
    _row("7", "DO", True, options=4),
    _row("8", "XX", False),
]


def test_nextqa_codes_grouped_into_families_as_papers_report_them():
    table = accuracy_table(NEXTQA_ROWS, groups=NEXTQA_GROUPS)
    assert list(table["accuracy"]) == [
        "causal",
        "CW",
        "CH",
        "temporal",
        "TN",
        "TC",
        "descriptive",
        "DC",
        "DO",
        "XX",
        "overall",
    ]
    acc, counts = table["accuracy"], table["counts"]
    assert (acc["causal"], counts["causal"]) == (pytest.approx(200 / 3), 3) and acc["CW"] == 50.0
    assert (acc["temporal"], acc["descriptive"], acc["overall"]) == (50.0, 100.0, 62.5)
    assert table["chance"]["descriptive"] == pytest.approx(100 * (1 / 5 + 1 / 4) / 2)
    assert table["groups"] == {"causal": ["CW", "CH"], "temporal": ["TN", "TC"], "descriptive": ["DC", "DO"]}
    md = markdown_table(table)
    assert "| causal | 3 | 66.7 | 20.0 |\n| ↳ CW | 2 | 50.0 | 20.0 |\n| ↳ CH | 1 | 100.0 | 20.0 |" in md
    assert "| XX | 1 | 0.0 | 20.0 |" in md and md.endswith("| overall | 8 | 62.5 | 20.6 |")


def test_a_held_out_family_holds_out_its_codes():
    table = accuracy_table(NEXTQA_ROWS, held_out=["causal"], groups=NEXTQA_GROUPS)
    assert table["held_out"] == ["CH", "CW", "causal"]
    assert (table["accuracy"]["unseen"], table["counts"]["unseen"]) == (pytest.approx(200 / 3), 3)
    assert table["counts"]["seen"] == 5 and "| causal (held out) | 3 |" in markdown_table(table)
    assert "| ↳ CW (held out) | 2 |" in markdown_table(table)

    class _NextQA:
        path = "fixture"

        def load(self, skips):
            return [Record(r["key"], "v.mp4", [("q", "a")], question_type=r["type"]) for r in NEXTQA_ROWS]

    kept = HoldOutTypes(_NextQA(), held_out=["causal", "TC"], type_groups=NEXTQA_GROUPS).load(SkipCounter(0.5))
    assert sorted(r.question_type for r in kept) == ["DC", "DO", "TN", "XX"]


@pytest.mark.parametrize(
    "groups,match",
    [
        ({"a": ["X"], "b": ["X"]}, "'X' is in both 'a' and 'b'"),
        ({"a": ["b"], "b": ["Y"]}, "'b' is both a family"),
        ({"a": []}, "lists no question types"),
    ],
)
def test_bad_type_groups_are_errors(groups, match):
    with pytest.raises(ValueError, match=match):
        accuracy_table(NEXTQA_ROWS, groups=groups)
