"""lab.narrate: the wrong twin of a caption differs from it only in who took part in one event."""

from __future__ import annotations

import random

from lab.narrate import NAME, recoloured_twin, wrong_twin

CAPTION = (
    "A blue circle, a yellow square and a green cross move around. The blue circle hits a wall, then the blue circle "
    "and the yellow square collide, then the green cross hits a wall."
)


def test_the_twin_swaps_one_event_object_for_another_of_the_clip():
    head = CAPTION.split(". ")[0]
    for seed in range(30):
        twin = wrong_twin(CAPTION, random.Random(seed))
        assert twin is not None and twin != CAPTION
        assert twin.split(". ")[0] == head  # the listed objects are untouched
        clauses, twins = CAPTION.split(". ", 1)[1].split(", then "), twin.split(". ", 1)[1].split(", then ")
        changed = [(a, b) for a, b in zip(clauses, twins) if a != b]
        assert len(changed) == 1
        before, after = (NAME.findall(x) for x in changed[0])
        assert len(before) == len(after) and sum(x != y for x, y in zip(before, after)) == 1
        new = next(y for x, y in zip(before, after) if x != y)
        assert new in NAME.findall(head) and new not in before  # another object of the clip, not of that clause


def test_captions_without_an_event_object_have_no_twin():
    rng = random.Random(0)
    assert wrong_twin("A red circle and a blue square move around. Nothing collides.", rng) is None
    assert wrong_twin("A red circle and a blue square bounce around; there are two wall hits.", rng) is None
    # a clause naming every object of the clip cannot take another one
    assert (
        wrong_twin("A red circle and a blue square move around. The red circle and the blue square collide.", rng)
        is None
    )


def test_the_control_recolours_one_object_everywhere_to_a_colour_the_clip_lacks():
    for seed in range(20):
        twin = recoloured_twin(CAPTION, random.Random(seed))
        before, after = NAME.findall(CAPTION), NAME.findall(twin)
        gone = set(before) - set(after)
        new = set(after) - set(before)
        assert len(gone) == 1 and len(new) == 1  # one object renamed, at every mention
        old, fresh = gone.pop(), new.pop()
        assert before.count(old) == after.count(fresh) and old.split()[1] == fresh.split()[1]
        assert fresh.split()[0] not in {n.split()[0] for n in before}
        assert twin.replace(fresh, old) == CAPTION


def test_narrate_scores_the_validation_pairs(tmp_path, capsys):
    """End to end on a tiny benchmark and random backbones, as `python -m lab narrate --config ...` runs."""
    import re
    from dataclasses import replace

    from tiny_assets import TINY_LLM, TINY_QFORMER, TINY_VIT, frame_qformer, reasoner, stage_config, synthetic_data

    from lab import narrate
    from lab.prepare import save_random_backbones
    from lab.synthetic import generate

    generate(tmp_path / "data", videos=30, seed=0, workers=1)
    save_random_backbones(str(tmp_path / "data" / "tokenizer"), tmp_path / "bb", seed=0, vit=TINY_VIT, llm=TINY_LLM)
    fusion = reasoner({"fusion": frame_qformer(replace(TINY_QFORMER, objects=True)), "objects": None})
    config = stage_config(tmp_path / "run", tmp_path / "bb", synthetic_data(tmp_path / "data", boxes=True), fusion)
    for swap in ("event", "object"):
        narrate.main(["--config", str(config), "--pairs", "5", "--swap", swap])
        line = capsys.readouterr().out.splitlines()[-1]
        share, pairs = re.search(rf"\({swap} swapped\).* in ([0-9.]+)% ± [0-9.]+ of (\d+) pairs", line).groups()
        assert 1 <= int(pairs) <= 5 and 0.0 <= float(share) <= 100.0
