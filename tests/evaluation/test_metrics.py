"""Per-type accuracy and open-ended metrics."""

import pytest
import torch

from vrp.scoring.metrics import OpenEndedMetrics, PerTypeAccuracy, normalize_answer


def test_per_type_accuracy_fixed_types():
    m = PerTypeAccuracy(["descriptive", "temporal", "predictive"])
    m.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]), ["descriptive", "temporal", "temporal"])
    m.update(torch.tensor([3]), torch.tensor([3]), ["descriptive"])
    out = m.compute()
    assert out == {"descriptive": 1.0, "temporal": 0.5, "overall": 0.75}
    assert m.counts() == {"descriptive": 2, "temporal": 2, "overall": 4}
    with pytest.raises(KeyError, match="counterfactual"):
        m.update(torch.tensor([0]), torch.tensor([0]), ["counterfactual"])


def test_per_type_accuracy_grows_and_resets():
    m = PerTypeAccuracy()
    m.update(torch.tensor([0, -1]), torch.tensor([0, 1]), ["CW", "TN"])
    assert m.compute() == {"CW": 1.0, "TN": 0.0, "overall": 0.5}
    m.reset()
    m.update(torch.tensor([1]), torch.tensor([1]), ["DC"])
    assert m.compute() == {"DC": 1.0, "overall": 1.0}


def test_open_ended_metrics():
    m = OpenEndedMetrics()
    m.update(["The red ball.", "a cube moves left"], ["red ball", ["the cube moves right", "cube moves left"]])
    out = m.compute()
    assert out["exact_match"] == 1.0
    assert out["rouge1"] == pytest.approx((0.8 + 6 / 7) / 2) and out["bleu4"] == 0  # no 4-grams in 3-word answers
    bigram = OpenEndedMetrics(bleu_n_gram=2)
    bigram.update(["the red ball moves"], ["red ball moves"])
    assert 0 < bigram.compute()["bleu2"] < 1
    m2 = OpenEndedMetrics()
    m2.update(["blue"], ["red ball"])
    assert m2.compute()["exact_match"] == 0.0 and m2.compute()["rouge1"] == 0.0
    assert normalize_answer("  The Ball, moves!") == "ball moves"
