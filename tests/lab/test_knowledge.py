"""The LLM's stage-0 knowledge corpus: scenes of its own seed stream (never a benchmark clip of seed 0), statements
only (no benchmark question), deterministic, and a control that shuffles the same sentences across scenes."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from lab.synthetic import knowledge as kn
from lab.synthetic.questions import propose
from lab.synthetic.simulator import simulate
from lab.synthetic.writer import HORIZON, SPLITS, VideoJob, draw_scene

PER_SPLIT = 300  # benchmark videos compared per split of data seed 0


@pytest.fixture(scope="module")
def docs() -> list[kn.Document]:
    return kn.knowledge_corpus(0, range(60))


def _benchmark_scenes(seed: int) -> dict:
    """The scenes of the first PER_SPLIT videos of each split of a benchmark of ``seed`` (default rules)."""
    return {
        draw_scene(VideoJob(split, i, seed, "", 128, 16, 32, 2, 5))[1]: (split, i)
        for split in SPLITS
        for i in range(PER_SPLIT)
    }


def _overlap(indices: range) -> list:
    bench = _benchmark_scenes(0)
    return [(i, bench[s]) for i in indices if (s := kn.knowledge_scene(0, i)[0]) in bench]


def test_no_knowledge_scene_is_a_benchmark_scene():
    assert _overlap(range(PER_SPLIT)) == []


def test_the_overlap_check_catches_a_generator_on_a_benchmark_stream(monkeypatch):
    monkeypatch.setattr(kn, "KNOWLEDGE_STREAM", SPLITS.index("val"))  # the validation split's seed sequence
    assert _overlap(range(5)) == [(i, ("val", i)) for i in range(5)]
    with pytest.raises(ValueError, match="seed"):
        kn.knowledge_scene(-1, 0)


def test_statements_only_no_question_of_any_template(docs):
    fragments = kn.question_fragments()
    for expected in ("Why did the", "What will the", "Which object, if removed, would stop the", "How many objects"):
        assert any(f.startswith(expected) for f in fragments), expected
    text = "\n".join(d.text for d in docs).lower()
    assert "?" not in text and not [f for f in fragments if re.search(rf"\b{re.escape(f.lower())}\b", text)]
    kn.check_statements(docs)
    scene, observed = kn.knowledge_scene(0, 1)
    asked = propose(scene, simulate(scene, observed + HORIZON), observed, np.random.default_rng(0))
    for c in asked:  # a benchmark question is refused, with or without its "?"
        for question in (c.question, c.question.rstrip("?") + "."):
            bad = kn.Document(0, "story", (*docs[0].sentences, question), (0,) * (len(docs[0].sentences) + 1))
            with pytest.raises(ValueError, match="holds"):
                kn.check_statements([bad])


def test_documents_tell_order_causes_next_and_without(docs):
    text = " ".join(d.text for d in docs)
    for words in ("First, the", "Then the", "Last, the", "changed direction because it hit", "will hit", "Next, the"):
        assert words in text, words
    assert re.search(r"Without the \w+ \w+, the \w+ \w+ would hit", text)
    assert re.search(r"(sped up because it was hit by|slowed down because it hit) the", text)
    assert all(d.sentences[0].startswith("There are ") for d in docs)
    assert all(len(d.text) <= kn.MAX_CHARS or len(d.sentences) == 2 for d in docs)
    assert {d.kind for d in docs} == {"story", "next", "without"}


def test_deterministic_and_seeded(docs):
    assert kn.knowledge_corpus(0, range(60)) == docs
    assert kn.knowledge_corpus(1, range(60)) != docs
    assert kn.knowledge_corpus(0, range(30, 60)) == [d for d in docs if d.scene >= 30]  # a scene is its index alone


def test_control_is_the_same_sentences_shuffled_across_scenes(docs):
    control = kn.control_corpus(docs, 0)
    assert control == kn.control_corpus(docs, 0)
    assert [len(d.sentences) for d in control] == [len(d.sentences) for d in docs]
    assert [(d.scene, d.kind) for d in control] == [(d.scene, d.kind) for d in docs]
    assert Counter(s for d in control for s in d.sentences) == Counter(s for d in docs for s in d.sentences)
    assert all(src != d.scene for d in control for src in d.sources)  # every sentence moved to another scene
    sentence_scene = {s: d.scene for d in docs for s in d.sentences[1:]}  # a sentence told of one scene only...
    unique = [s for s, n in Counter(s for d in docs for s in d.sentences[1:]).items() if n == 1]
    moved = [s for d in control for s in d.sentences if s in unique and sentence_scene[s] == d.scene]
    assert len(unique) > 100 and moved == []  # ...now sits in another scene's document
    with pytest.raises(ValueError, match="half"):
        kn.control_corpus([d for d in docs if d.scene == 0], 0)


def test_token_budget_and_probe_items(docs):
    budget = kn.Budget(60, lambda t: len(t.split()))  # words as tokens
    small = kn.knowledge_corpus(0, range(5), budget=budget)
    assert all(len(d.text.split()) <= 60 or len(d.sentences) == 2 for d in small)
    assert len(small) > len(kn.knowledge_corpus(0, range(5)))
    items = kn.probe_items(docs, 0, per_kind=20)
    assert set(Counter(it.kind for it in items)) == {"cause", "next", "without"}
    for it in items:
        assert it.true != it.wrong and it.context.startswith("There are ")
        assert any(f"{it.context} {it.true}" in d.text for d in docs)
