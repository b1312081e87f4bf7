"""Blind baselines: accuracy of answering from the text alone (question + options), fitted on train items.

- chance: mean of 1/#options.
- majority: pick the option that was most often the answer of this type in train.
- letter: pick the most frequent correct letter of the template in train.
- content prior: pick the option content with the highest P(correct | template, content) in train.
- question prior: the same conditioned on the exact question text, backing off to the content prior.
`best_text_prior` is the best of letter / content / question prior. A balanced benchmark keeps them all at chance.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from lab.synthetic.questions import TYPES, Item


def _fit(train: list[Item]):
    answers = defaultdict(Counter)  # type -> content -> times correct
    letters = defaultdict(Counter)  # template -> letter -> times correct
    correct, shown = Counter(), Counter()  # (template, content)
    q_correct, q_shown = Counter(), Counter()  # (template, question, content)
    for it in train:
        answers[it.type][it.answer] += 1
        letters[it.template][it.answer_index] += 1
        for j, o in enumerate(it.options):
            shown[it.template, o] += 1
            q_shown[it.template, it.question, o] += 1
            if j == it.answer_index:
                correct[it.template, o] += 1
                q_correct[it.template, it.question, o] += 1
    return answers, letters, correct, shown, q_correct, q_shown


def _predict(model, it: Item) -> dict[str, int]:
    answers, letters, correct, shown, q_correct, q_shown = model
    n = len(it.options)
    content = [(correct[it.template, o] + 1) / (shown[it.template, o] + n) for o in it.options]
    question = [
        (q_correct[it.template, it.question, o] + 2 * p) / (q_shown[it.template, it.question, o] + 2)
        for o, p in zip(it.options, content)
    ]
    letter = max(range(n), key=lambda j: (letters[it.template][j], -j))
    return {
        "majority": int(np.argmax([answers[it.type][o] for o in it.options])),
        "letter": letter,
        "content_prior": int(np.argmax(content)),
        "question_prior": int(np.argmax(question)),
    }


def blind_baselines(train: list[Item], evaluate: list[Item]) -> dict[str, dict]:
    """Per-type blind accuracies on `evaluate` (a held-out split) with priors fitted on `train`.

    Not meant for train itself: each split is balanced on its own, so in-sample or cross-fitted numbers on train
    are biased (up or down) in ways a held-out split is not.
    """
    model = _fit(train)
    hits = defaultdict(lambda: defaultdict(list))
    for it in evaluate:
        hits[it.type]["chance"].append(1 / len(it.options))
        for name, j in _predict(model, it).items():
            hits[it.type][name].append(float(j == it.answer_index))
    out = {}
    for t in TYPES:
        if not hits[t]:
            continue
        row = {name: round(float(np.mean(v)), 4) for name, v in hits[t].items()}
        row["best_text_prior"] = max(row["letter"], row["content_prior"], row["question_prior"])
        out[t] = {"count": len(hits[t]["chance"]), **row}
    return out


def format_table(baselines: dict[str, dict], title: str = "") -> str:
    cols = ["count", "chance", "majority", "letter", "content_prior", "question_prior", "best_text_prior"]
    lines = [title] if title else []
    lines.append(f"{'type':<15}" + "".join(f"{c:>16}" for c in cols))
    for t, row in baselines.items():
        lines.append(f"{t:<15}" + "".join(f"{row[c]:>16}" if c == "count" else f"{row[c]:>16.3f}" for c in cols))
    return "\n".join(lines)
