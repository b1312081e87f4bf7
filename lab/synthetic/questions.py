"""Question candidates answered by the simulator, and the balancing that keeps a blind model at chance.

Each video proposes at most one candidate per template (`propose`). `balance` then works per template over a
whole split: it caps over-frequent answers, picks distractors so that every option content is correct in 1/n of
the items that show it (n = options per item), and spreads the correct letter uniformly. Options of an item never
share a colour with each other or with an object named in the question, so no option is ruled out by the text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lab.synthetic.simulator import COLORS, SHAPES, Event, Scene, Trajectory, simulate

TYPES = ("descriptive", "temporal", "explanatory", "predictive", "counterfactual")
NUMBERS = ("zero", "one", "two", "three", "four", "five")
WALL = "a wall"
GAP = 2  # frames that must separate the event asked about from the next one, so the answer is not ambiguous
SOON = 10  # predictive events happen at most this many frames after the last observed frame
ALL_OBJECTS = [f"{c} {s}" for c in COLORS for s in SHAPES]


@dataclass
class Candidate:
    type: str
    template: str
    question: str
    answer: str  # the correct option text
    sentence: str  # the free-text answer
    num_options: int
    pool: list[str]  # every allowed option text (the answer included)
    preferred: list[str] = field(default_factory=list)  # plausible distractors taken from the scene, used first
    exclude_groups: tuple[str, ...] = ()  # colours named in the question


@dataclass
class Item:
    key: str
    qid: int
    type: str
    template: str
    question: str
    options: list[str]
    answer_index: int
    sentence: str

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]


def group(option: str) -> str:
    """Options of one item must differ in this: the colour of the object they name, else the text itself."""
    m = re.search(r"\b(" + "|".join(COLORS) + r")\b", option)
    return m.group(1) if m else option


def _event_phrase(names: list[str], e: Event) -> str:
    if e.is_wall:
        return f"the {names[e.a]} hits a wall"
    return f"the {names[e.a]} and the {names[e.other]} collide"


def captions(scene: Scene, traj: Trajectory, observed: int, rng: np.random.Generator) -> list[str]:
    """1-3 captions naming the objects and the (observed) events in order."""
    names = [o.name for o in scene.objects]
    listed = ", ".join(f"a {n}" for n in names[:-1]) + f" and a {names[-1]}"
    events = [e for e in traj.events if e.frame < observed]
    if events:
        story = ", then ".join(_event_phrase(names, e) for e in events[:5])
        story = story[0].upper() + story[1:] + ("." if len(events) <= 5 else ", and more.")
    else:
        story = "Nothing collides."
    walls = sum(e.is_wall for e in events)
    hits = len(events) - walls
    forms = [
        f"{listed[0].upper()}{listed[1:]} move around. {story}",
        f"There are {NUMBERS[len(names)]} objects: {listed}. {story}",
        f"{listed[0].upper()}{listed[1:]} bounce around; there are {NUMBERS[min(walls, 5)] if walls <= 5 else 'many'}"
        f" wall hits and {NUMBERS[min(hits, 5)] if hits <= 5 else 'many'} collisions between objects.",
    ]
    count = int(rng.integers(1, 4))
    order = rng.permutation(len(forms))[:count]
    return [forms[i] for i in sorted(order)]


def speed_change(speed: np.ndarray, frame: int, i: int) -> int:
    """+1 if object ``i`` sped up clearly from ``frame - 1`` to ``frame`` (by 30% and at least 0.5 pixel per frame),
    -1 if it slowed down as clearly, else 0; ``speed`` (F, K) per frame and object."""
    before, after = speed[frame - 1, i], speed[frame, i]
    for sign in (1, -1):
        if sign * (after - before) >= max(0.3 * before, 0.5):
            return sign
    return 0


def _first_events(events: list[Event], i: int, start: int, stop: int) -> list[Event]:
    return [e for e in events if e.involves(i) and start <= e.frame < stop]


def _clear(events: list[Event], who=lambda e: e) -> bool:
    """The first event is at least GAP frames before the next one with a different answer."""
    if not events:
        return False
    first = events[0]
    return all(abs(e.frame - first.frame) >= GAP for e in events[1:] if who(e) != who(first))


def _partner_name(names: list[str], e: Event, i: int) -> str:
    p = e.partner(i)
    return WALL if p == "wall" else names[p]


def _collide(traj: Trajectory, a: int, b: int) -> bool:
    return any(not e.is_wall and {e.a, e.other} == {a, b} for e in traj.events)


def _obj_pool(exclude: set[str]) -> list[str]:
    return [n for n in ALL_OBJECTS if group(n) not in exclude]


@dataclass
class _Video:
    """What every template family reads about one video; ``rng`` is shared, so the families draw in a fixed order."""

    scene: Scene
    traj: Trajectory  # runs past the observed frames (for predictive questions)
    observed: int
    rng: np.random.Generator
    names: list[str] = field(init=False)
    colors: list[str] = field(init=False)
    seen: list[Event] = field(init=False)  # the events of the observed frames

    def __post_init__(self) -> None:
        self.names = [o.name for o in self.scene.objects]
        self.colors = [o.color for o in self.scene.objects]
        self.seen = [e for e in self.traj.events if 1 <= e.frame < self.observed]

    @property
    def k(self) -> int:
        return len(self.scene.objects)

    def pick(self, options: list[int]) -> int | None:
        return options[int(self.rng.integers(len(options)))] if options else None

    def others(self, *skip: int) -> list[str]:
        """The names of the objects other than ``skip``: the plausible distractors."""
        return [n for j, n in enumerate(self.names) if j not in skip]


def _candidate(
    type_: str, template: str, question: str, answer: str, sentence: str, n: int, pool, preferred=(), exclude=()
) -> Candidate:
    return Candidate(type_, template, question, answer, sentence, n, list(pool), list(preferred), tuple(exclude))


def propose(scene: Scene, traj: Trajectory, observed: int, rng: np.random.Generator) -> list[Candidate]:
    """Candidates for one video. `traj` runs past the `observed` frames (for predictive questions). Each family
    proposes at most one candidate per template, in this order (they share ``rng``)."""
    video = _Video(scene, traj, observed, rng)
    return [
        c for family in (_descriptive, _temporal, _explanatory, _predictive, _counterfactual) for c in family(video)
    ]


def _descriptive(v: _Video) -> list[Candidate]:
    objs, names, colors, k = v.scene.objects, v.names, v.colors, v.k
    out = [
        _candidate(
            "descriptive",
            "count",
            "How many objects are there?",
            NUMBERS[k],
            f"There are {NUMBERS[k]} objects.",
            4,
            NUMBERS[2:6],
        )
    ]
    i = int(v.rng.integers(k))
    out.append(
        _candidate(
            "descriptive",
            "shape",
            f"What shape is the {colors[i]} object?",
            objs[i].shape,
            f"The {colors[i]} object is a {objs[i].shape}.",
            4,
            SHAPES,
            exclude=(colors[i],),
        )
    )
    unique = [j for j in range(k) if sum(o.shape == objs[j].shape for o in objs) == 1]
    if (j := v.pick(unique)) is not None:
        shape = objs[j].shape
        out.append(
            _candidate(
                "descriptive",
                "color",
                f"What color is the {shape}?",
                colors[j],
                f"The {shape} is {colors[j]}.",
                5,
                list(COLORS),
                preferred=[c for c in colors if c != colors[j]],
            )
        )
    speed = np.linalg.norm(np.diff(v.traj.positions[: v.observed], axis=0), axis=-1).mean(0)  # (K,)
    order = np.argsort(-speed)
    if k >= 2 and speed[order[0]] >= 1.25 * speed[order[1]]:
        f = int(order[0])
        out.append(
            _candidate(
                "descriptive",
                "fastest",
                "Which object moves fastest?",
                names[f],
                f"The {names[f]} moves fastest.",
                5,
                ALL_OBJECTS,
                preferred=v.others(f),
            )
        )
    return out


def _temporal(v: _Video) -> list[Candidate]:
    names, colors, out = v.names, v.colors, []
    for template, idx, word in (("first_hit", 0, "first"), ("last_hit", -1, "last")):
        for x in map(int, v.rng.permutation(v.k)):  # the first object whose answer is unambiguous
            ev = _first_events(v.seen, x, 1, v.observed)
            ev = ev if idx == 0 else ev[::-1]
            if not _clear(ev, lambda e: e.partner(x)):
                continue
            ans = _partner_name(names, ev[0], x)
            out.append(
                _candidate(
                    "temporal",
                    template,
                    f"What did the {names[x]} hit {word}?",
                    ans,
                    f"The {names[x]} hit {'a wall' if ans == WALL else 'the ' + ans} {word}.",
                    5,
                    _obj_pool({colors[x]}) + [WALL],
                    preferred=v.others(x),
                    exclude=(colors[x],),
                )
            )
            break
    walls = [e for e in v.seen if e.is_wall]
    if _clear(walls, lambda e: e.a):
        w = walls[0].a
        out.append(
            _candidate(
                "temporal",
                "first_wall",
                "Which object hit a wall first?",
                names[w],
                f"The {names[w]} hit a wall first.",
                5,
                ALL_OBJECTS,
                preferred=v.others(w),
            )
        )
    return out


def _explanatory(v: _Video) -> list[Candidate]:
    names, colors, out = v.names, v.colors, []
    once = [j for j in range(v.k) if len(_first_events(v.seen, j, 1, v.observed)) == 1]
    if (x := v.pick(once)) is not None:
        e = _first_events(v.seen, x, 1, v.observed)[0]
        p = _partner_name(names, e, x)
        ans = "it hit a wall" if p == WALL else f"it hit the {p}"
        out.append(
            _candidate(
                "explanatory",
                "why_turn",
                f"Why did the {names[x]} change direction?",
                ans,
                f"The {names[x]} changed direction because {ans}.",
                5,
                [f"it hit the {n}" for n in _obj_pool({colors[x]})] + ["it hit a wall"],
                preferred=[f"it hit the {n}" for n in v.others(x)],
                exclude=(colors[x],),
            )
        )
    vel = np.linalg.norm(v.traj.velocities, axis=-1)  # (F, K)
    for template, sign, verb, phrase in (
        ("why_faster", 1, "speed up", "it was hit by the"),
        ("why_slower", -1, "slow down", "it hit the"),
    ):
        changes: dict[int, list[tuple[int, Event]]] = {}
        for e in v.seen:
            if e.is_wall or e.frame >= v.observed:
                continue
            for me, other in ((e.a, e.other), (e.other, e.a)):
                if speed_change(vel, e.frame, me) == sign:
                    changes.setdefault(me, []).append((other, e))
        if (x := v.pick([x for x, c in changes.items() if len(c) == 1])) is not None:
            y = changes[x][0][0]
            ans = f"{phrase} {names[y]}"
            out.append(
                _candidate(
                    "explanatory",
                    template,
                    f"Why did the {names[x]} {verb}?",
                    ans,
                    f"The {names[x]} {'sped up' if sign > 0 else 'slowed down'} because {ans}.",
                    5,
                    [f"{phrase} {n}" for n in _obj_pool({colors[x]})],
                    preferred=[f"{phrase} {n}" for n in v.others(x, y)],
                    exclude=(colors[x],),
                )
            )
    return out


def _predictive(v: _Video) -> list[Candidate]:
    """Events after the last observed frame, soon after the cut."""
    names, colors, events, out = v.names, v.colors, v.traj.events, []
    for x in map(int, v.rng.permutation(v.k)):
        ev = [e for e in events if e.involves(x) and e.frame >= v.observed]
        if not (ev and ev[0].frame < v.observed + SOON and _clear(ev, lambda e: e.partner(x))):
            continue
        ans = _partner_name(names, ev[0], x)
        out.append(
            _candidate(
                "predictive",
                "next_hit",
                f"What will the {names[x]} hit next?",
                ans,
                f"The {names[x]} will hit {'a wall' if ans == WALL else 'the ' + ans} next.",
                5,
                _obj_pool({colors[x]}) + [WALL],
                preferred=v.others(x),
                exclude=(colors[x],),
            )
        )
        break
    fwalls = [e for e in events if v.observed <= e.frame < v.observed + SOON and e.is_wall]
    later_walls = [e for e in events if e.is_wall and e.frame >= v.observed]
    if fwalls and _clear(later_walls, lambda e: e.a):
        w = fwalls[0].a
        out.append(
            _candidate(
                "predictive",
                "next_wall",
                "Which object will hit a wall next?",
                names[w],
                f"The {names[w]} will hit a wall next.",
                5,
                ALL_OBJECTS,
                preferred=v.others(w),
            )
        )
    return out


def _counterfactual(v: _Video) -> list[Candidate]:
    """The observed window re-run without one object."""
    names, colors, k, out = v.names, v.colors, v.k, []
    if k < 2:
        return out
    cache: dict[int, Trajectory] = {}

    def cf(z: int) -> Trajectory:  # the observed window re-run without object z
        if z not in cache:
            cache[z] = simulate(v.scene.without(z), v.observed)
        return cache[z]

    found: list[tuple[int, int, str]] = []  # (z, x, answer) whose counterfactual answer is clear and new
    for z in range(k):
        rest = [j for j in range(k) if j != z]
        for cx, x in enumerate(rest):  # cx: index of x in the scene without z
            fact = _first_events(v.seen, x, 1, v.observed)
            counter = _first_events(cf(z).events, cx, 1, v.observed)
            if _clear(counter, lambda e: e.partner(cx)):
                ans = _partner_name([names[j] for j in rest], counter[0], cx)
                if ans != (_partner_name(names, fact[0], x) if fact else None):
                    found.append((z, x, ans))
    # "a wall" is the commonest answer and balancing caps it, so prefer an object answer when there is one
    objects_first = [f for f in found if f[2] != WALL] or found
    if objects_first:
        z, x, ans = objects_first[int(v.rng.integers(len(objects_first)))]
        out.append(
            _candidate(
                "counterfactual",
                "cf_first_hit",
                f"If the {names[z]} were removed, what would the {names[x]} hit first?",
                ans,
                f"Without the {names[z]}, the {names[x]} would hit {'a wall' if ans == WALL else 'the ' + ans} first.",
                5,
                _obj_pool({colors[x], colors[z]}) + [WALL],
                preferred=v.others(x, z),
                exclude=(colors[x], colors[z]),
            )
        )
    pairs = sorted({(e.a, e.other) for e in v.seen if not e.is_wall}) if k >= 3 else []
    for p in v.rng.permutation(len(pairs)):
        a, b = pairs[int(p)]
        stoppers = [z for z in range(k) if z not in (a, b) and not _collide(cf(z), a - (a > z), b - (b > z))]
        if len(stoppers) != 1:
            continue
        z = stoppers[0]
        out.append(
            _candidate(
                "counterfactual",
                "cf_prevent",
                f"Which object, if removed, would stop the {names[a]} from hitting the {names[b]}?",
                names[z],
                f"Removing the {names[z]} would stop the {names[a]} from hitting the {names[b]}.",
                4,
                _obj_pool({colors[a], colors[b]}),
                preferred=v.others(a, b, z),
                exclude=(colors[a], colors[b]),
            )
        )
        break
    return out


def _cap(answers: list[str], n: int) -> int:
    """Largest per-answer cap m with m <= N(m) / n, where N(m) = sum_c min(count_c, m)."""
    counts = Counter(answers)
    for m in range(max(counts.values()), 0, -1):
        if n * m <= sum(min(c, m) for c in counts.values()):
            return m
    return 0


def balance(cands: list[tuple[str, int, Candidate]], rng: np.random.Generator) -> list[Item]:
    """Turn (key, qid, candidate) triples of ONE template into items with balanced answers, options and letters."""
    if not cands:
        return []
    n = cands[0][2].num_options
    order = rng.permutation(len(cands))
    m = _cap([cands[i][2].answer for i in order], n)
    kept, per_answer = [], Counter()
    for i in order:
        c = cands[i][2]
        if per_answer[c.answer] < m:
            per_answer[c.answer] += 1
            kept.append(cands[i])
    target = {a: n * cnt for a, cnt in per_answer.items()}  # how often each content should be shown
    shown: Counter = Counter()
    letters = np.resize(np.arange(n), len(kept))
    rng.shuffle(letters)
    items = []
    for (key, qid, c), letter in zip(kept, letters):
        used = {group(c.answer), *c.exclude_groups}
        options = [c.answer]
        for p in rng.permutation(len(c.preferred)):
            d = c.preferred[p]
            if len(options) < n and group(d) not in used and d in c.pool:
                options.append(d)
                used.add(group(d))
        while len(options) < n:
            free = [d for d in c.pool if group(d) not in used]
            if not free:
                raise ValueError(f"{key} q{qid} ({c.template}): not enough distinct distractors for {n} options")
            need = np.array([target.get(d, 0) - shown[d] for d in free], dtype=float)
            need += rng.uniform(0, 0.5, size=len(free))  # random tie-break
            d = free[int(np.argmax(need))]
            options.append(d)
            used.add(group(d))
        shown.update(options)
        distractors = [options[1 + p] for p in rng.permutation(n - 1)]
        final = distractors[:letter] + [c.answer] + distractors[letter:]
        items.append(Item(key, qid, c.type, c.template, c.question, final, int(letter), c.sentence))
    return items
