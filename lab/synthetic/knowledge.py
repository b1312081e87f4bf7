"""Knowledge of the synthetic world for the LLM's stage 0: documents that tell what happens in scenes of a seed
stream of their own (never a benchmark clip), in the benchmark's words, and never ask a benchmark question.

Scenes: scene ``i`` of seed ``s`` is drawn by the benchmark's rules (`writer.draw`: object count, radii, speeds,
observed frames) from ``SeedSequence([s, KNOWLEDGE_STREAM, i])`` and simulated with the same simulator, ``HORIZON``
frames past its observed window. A benchmark video of seed ``s``, split ``p`` and index ``i`` is drawn from
``SeedSequence([s, p, i])`` with ``p`` a split index (0, 1, 2); ``KNOWLEDGE_STREAM`` stands where ``p`` stands and
is no split index, so no knowledge scene comes from the random stream of a benchmark video, whatever the seeds
(the tests compare the drawn scenes themselves).

Documents of one scene, each a list of sentences that opens with the objects (``There are three objects: ...``):
- ``story``: where each object moves at the start and which moves faster; the collisions and wall hits of the
  observed frames in order (first, then, last); what each object hit first and last; the causes (``The red square
  changed direction because it hit the blue circle.``, sped up / slowed down because ...).
- ``next``: the state at the last observed frame (where each object moves, toward which object or wall, whether it
  is near it), then what happens after the cut (the simulation beyond the window) and what each object will hit next.
- ``without``: for each object ``z``, the observed window re-run without it (``simulate(scene.without(z), ...)``):
  what each other object would hit first (after what it did hit first, when that differs) and which collisions
  would not (or would) happen.
A document longer than its budget (`Budget`: ``MAX_CHARS`` characters, or a token count) is split into several,
each opening with the objects again.

`control_corpus` moves every sentence to another scene's document (same documents, same sentences per document):
the same words and sentence forms, no coherent scene. `check_statements` refuses a "?" and every fixed phrase of the
question templates in `questions.py` (`question_fragments`).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lab.synthetic import questions
from lab.synthetic.questions import NUMBERS, SOON, _clear, _event_phrase, speed_change
from lab.synthetic.simulator import Event, Scene, Trajectory, simulate
from lab.synthetic.writer import HORIZON, draw

KNOWLEDGE_STREAM = 0x6B6E6F77  # "know": where a benchmark video's seed sequence holds its split index (0, 1, 2)
MAX_CHARS = 400  # a document's default length budget in characters (stage 0 counts tokens instead)
FASTER = 1.25  # one object "moves faster" than another when its mean speed is at least this many times larger
DIRECTIONS = ("right", "down and right", "down", "down and left", "left", "up and left", "up", "up and right")


@dataclass(frozen=True)
class World:
    """The benchmark's drawing rules (`writer.generate`'s defaults; `World.of` reads a generated dataset's)."""

    size: int = 128
    min_frames: int = 16
    max_frames: int = 32
    min_objects: int = 2
    max_objects: int = 5
    horizon: int = HORIZON

    @classmethod
    def of(cls, config: dict) -> World:
        """The rules of a dataset's ``meta.json["config"]``."""
        keys = ("size", "min_frames", "max_frames", "min_objects", "max_objects", "horizon")
        return cls(**{k: int(config[k]) for k in keys if k in config})


@dataclass(frozen=True)
class Budget:
    """A document's length limit: ``length(text)`` (characters by default; stage 0 counts tokens) at most ``limit``."""

    limit: int = MAX_CHARS
    length: Callable[[str], int] = len

    def size(self, sentences: tuple[str, ...]) -> int:
        """The length of the document of these sentences (joined by spaces)."""
        return self.length(sentences[0]) + sum(self.length(" " + s) for s in sentences[1:])

    def pack(self, intro: str, body: list[str]) -> list[tuple[str, ...]]:
        """``body`` in chunks within the limit, each opening with ``intro``; a sentence is never cut, so a chunk
        of the intro and one sentence may exceed it. The length of a chunk is that of its first sentence plus that
        of each further one with its space before (exact for a byte-level BPE, which splits words at the space)."""
        chunks, current, used = [], [intro], self.length(intro)
        for sentence in body:
            n = self.length(" " + sentence)
            if len(current) > 1 and used + n > self.limit:
                chunks.append(tuple(current))
                current, used = [intro], self.length(intro)
            current.append(sentence)
            used += n
        return chunks + [tuple(current)]


@dataclass(frozen=True)
class Document:
    scene: int  # the index of the scene whose document this is
    kind: str  # "story", "next" or "without"
    sentences: tuple[str, ...]
    sources: tuple[int, ...]  # per sentence, the scene it tells about (all ``scene`` but in the control corpus)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def knowledge_scene(seed: int, index: int, world: World = World()) -> tuple[Scene, int]:
    """Scene ``index`` of the knowledge stream of ``seed`` and its number of observed frames."""
    if not 0 <= seed < 2**32 or index < 0:
        raise ValueError(f"need 0 <= seed < 2**32 and index >= 0, got seed {seed}, index {index}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, KNOWLEDGE_STREAM, index]))
    return draw(rng, world.size, world.min_frames, world.max_frames, world.min_objects, world.max_objects)


def knowledge_corpus(seed: int, indices: range, world: World = World(), budget: Budget | None = None) -> list[Document]:
    """The documents of the knowledge scenes ``indices`` of ``seed``, in scene order; statements only (checked)."""
    docs = []
    for i in indices:
        scene, observed = knowledge_scene(seed, i, world)
        docs += scene_documents(i, scene, observed, world.horizon, budget or Budget())
    check_statements(docs)
    return docs


def scene_documents(index: int, scene: Scene, observed: int, horizon: int, budget: Budget) -> list[Document]:
    """The documents of one scene (see the module's docstring)."""
    traj = simulate(scene, observed + horizon)
    tell = _Teller(scene, traj, observed)
    without = [s for z in range(len(scene.objects)) for s in tell.without(z)]
    bodies = [("story", tell.story()), ("next", tell.next()), ("without", without)]
    return [
        Document(index, kind, chunk, (index,) * len(chunk))
        for kind, body in bodies
        if body
        for chunk in budget.pack(tell.intro(), body)
    ]


def _direction(vx: float, vy: float) -> str:
    """One of eight direction words for a velocity (image coordinates: y grows downwards)."""
    return DIRECTIONS[round(math.atan2(vy, vx) / (math.pi / 4)) % 8]


def _the(name: str) -> str:
    """How a sentence names what was hit: "a wall" or "the <object>"."""
    return name if name == questions.WALL else f"the {name}"


def _partner(names: list[str], e: Event, i: int) -> str:
    p = e.partner(i)
    return questions.WALL if p == "wall" else names[p]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _in_order(phrases: list[str], first: str, last: str | None) -> list[str]:
    """Event phrases told in order: "<first> <p0>.", "Then <p>.", ..., "<last> <pn>." (``last`` None: "Then")."""
    out = [f"{first} {phrases[0]}." if first else f"{_cap(phrases[0])}."]
    out += [f"Then {p}." for p in phrases[1:-1]]
    if len(phrases) > 1:
        out.append(f"{last} {phrases[-1]}." if last else f"Then {phrases[-1]}.")
    return out


class _Teller:
    """The sentences about one simulated scene; ``traj`` runs past the ``observed`` frames."""

    def __init__(self, scene: Scene, traj: Trajectory, observed: int) -> None:
        self.scene, self.traj, self.observed = scene, traj, observed
        self.names = [o.name for o in scene.objects]
        self.k = len(self.names)
        self.seen = [e for e in traj.events if 1 <= e.frame < observed]
        self.speed = np.linalg.norm(traj.velocities, axis=-1)  # (F, K)

    def intro(self) -> str:
        listed = ", ".join(f"a {n}" for n in self.names[:-1]) + f" and a {self.names[-1]}"
        return f"There are {NUMBERS[self.k]} objects: {listed}."

    def story(self) -> list[str]:
        """Motions, the observed events in order, then per object what it hit first and last and why it turned."""
        out = self._motions()
        phrases = [_event_phrase(self.names, e) for e in self.seen]
        out += _in_order(phrases, "First,", "Last,") if phrases else ["Nothing collides."]
        return out + [s for i in range(self.k) for s in self._first_last(i) + self._causes(i)]

    def _motions(self) -> list[str]:
        v0 = self.traj.velocities[0]  # (K, 2)
        out = [f"At the start, the {n} moves {_direction(*v0[i])}." for i, n in enumerate(self.names)]
        mean = self.speed[: self.observed].mean(0)  # (K,)
        order = [int(i) for i in np.argsort(-mean)]
        pairs = list(zip(order, order[1:]))
        if mean[pairs[0][0]] >= FASTER * mean[pairs[0][1]]:
            out.append(f"The {self.names[pairs[0][0]]} moves fastest.")
        out += [
            f"The {self.names[a]} moves faster than the {self.names[b]}."
            for a, b in pairs
            if mean[a] >= FASTER * mean[b]
        ]
        return out

    def _first_last(self, i: int) -> list[str]:
        out, ev = [], [e for e in self.seen if e.involves(i)]
        for events, word in ((ev, "first"), (ev[::-1] if len(ev) > 1 else [], "last")):
            if _clear(events, lambda e: e.partner(i)):
                out.append(f"The {self.names[i]} hit {_the(_partner(self.names, events[0], i))} {word}.")
        return out

    def _causes(self, i: int) -> list[str]:
        """Why object ``i`` changed direction and speed, each cause once, in the order of its events."""
        out: list[str] = []
        for e in (e for e in self.seen if e.involves(i)):
            out.append(f"The {self.names[i]} changed direction because it hit {_the(_partner(self.names, e, i))}.")
            if e.is_wall:
                continue
            other = self.names[e.partner(i)]
            change = speed_change(self.speed, e.frame, i)
            if change > 0:
                out.append(f"The {self.names[i]} sped up because it was hit by the {other}.")
            elif change < 0:
                out.append(f"The {self.names[i]} slowed down because it hit the {other}.")
        return list(dict.fromkeys(out))

    def next(self) -> list[str]:
        """Per object its state at the cut and what it will hit next, then the events after the cut in order."""
        future = [e for e in self.traj.events if e.frame >= self.observed]
        out = []
        for i, n in enumerate(self.names):
            out.append(self._state(i))
            ev = [e for e in future if e.involves(i)]
            if ev and ev[0].frame < self.observed + SOON and _clear(ev, lambda e: e.partner(i)):
                out.append(f"The {n} will hit {_the(_partner(self.names, ev[0], i))} next.")
        phrases = [_event_phrase(self.names, e) for e in future[:4]]
        return out + (_in_order(phrases, "Next,", None) if phrases else ["Nothing collides next."])

    def _state(self, i: int) -> str:
        """Where object ``i`` moves at the last observed frame: toward what it would reach first going straight,
        and whether it would reach it within ``SOON`` frames ("near")."""
        f = self.observed - 1
        pos, vel = self.traj.positions[f], self.traj.velocities[f]  # (K, 2) each
        r = [o.radius for o in self.scene.objects]
        reach = [(t, f"the {w} wall") for t, w in _wall_times(pos[i], vel[i], r[i], self.scene.size)]
        reach += [
            (t, f"the {self.names[j]}")
            for j in range(self.k)
            if j != i and (t := _contact_time(pos[j] - pos[i], vel[j] - vel[i], r[i] + r[j])) is not None
        ]
        if not reach:
            return f"At the end, the {self.names[i]} stands still."
        t, target = min(reach)
        near = "near it" if t < SOON else "far from it"
        return f"At the end, the {self.names[i]} moves {_direction(*vel[i])} toward {target} and is {near}."

    def without(self, z: int) -> list[str]:
        """The observed window re-run without object ``z``."""
        if self.k < 2:
            return []
        rest = [j for j in range(self.k) if j != z]
        cf = simulate(self.scene.without(z), self.observed)
        cf_seen = [e for e in cf.events if 1 <= e.frame < self.observed]
        out = []
        for cx, x in enumerate(rest):  # cx: the index of x in the scene without z
            out += self._first_hit_without(z, x, [e for e in cf_seen if e.involves(cx)], cx, rest)
        fact = {frozenset((e.a, e.other)) for e in self.seen if not e.is_wall and z not in (e.a, e.other)}
        counter = {frozenset((rest[e.a], rest[e.other])) for e in cf_seen if not e.is_wall}
        for pair, verb in ((fact - counter, "would not collide"), (counter - fact, "would collide")):
            for a, b in sorted(sorted(p) for p in pair):
                out.append(f"Without the {self.names[z]}, the {self.names[a]} and the {self.names[b]} {verb}.")
        return out

    def _first_hit_without(self, z: int, x: int, counter: list[Event], cx: int, rest: list[int]) -> list[str]:
        """What ``x`` would hit first without ``z`` (``counter``: its events there), after what it hit first if that
        differs."""
        fact = [e for e in self.seen if e.involves(x)]
        said = _partner(self.names, fact[0], x) if _clear(fact, lambda e: e.partner(x)) else None
        if not _clear(counter, lambda e: e.partner(cx)):
            return []
        would = _partner([self.names[j] for j in rest], counter[0], cx)
        if would == said:
            return [f"Without the {self.names[z]}, the {self.names[x]} would still hit {_the(would)} first."]
        out = [f"The {self.names[x]} hit {_the(said)} first."] if said else []
        return out + [f"Without the {self.names[z]}, the {self.names[x]} would hit {_the(would)} first."]


def _wall_times(pos: np.ndarray, vel: np.ndarray, radius: float, size: int) -> list[tuple[float, str]]:
    """(frames until the disc at ``pos`` moving at ``vel`` touches a wall, the wall) for each wall it moves toward."""
    out = []
    for axis, (low, high) in enumerate((("left", "right"), ("top", "bottom"))):
        if vel[axis] < 0:
            out.append((max(0.0, (pos[axis] - radius) / -vel[axis]), low))
        elif vel[axis] > 0:
            out.append((max(0.0, (size - radius - pos[axis]) / vel[axis]), high))
    return out


def _contact_time(d: np.ndarray, w: np.ndarray, reach: float) -> float | None:
    """Frames until two discs touch going straight (``d``: offset of the other, ``w``: its relative velocity, both
    (2,); ``reach``: the sum of the radii), None if they do not approach each other or pass without touching."""
    a, b, c = float(w @ w), 2 * float(d @ w), float(d @ d) - reach * reach
    if a == 0 or b >= 0 or b * b - 4 * a * c < 0:
        return None
    return max(0.0, (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a))


def control_corpus(docs: list[Document], seed: int) -> list[Document]:
    """The sentences of ``docs`` shuffled across scenes: every document keeps its place and number of sentences,
    and each of its sentences now comes from another scene's document (a random permutation, then swaps until no
    sentence sits in a document of its own scene)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, KNOWLEDGE_STREAM, 1]))
    pool = [(s, src) for d in docs for s, src in zip(d.sentences, d.sources)]  # (sentence, its scene)
    slots = [d.scene for d in docs for _ in d.sentences]  # the scene of the document each position belongs to
    most = max(Counter(slots).values(), default=0)
    if 2 * most > len(slots):  # then some of its sentences would have no other scene's place to go
        raise ValueError(
            f"a control corpus needs every scene to hold at most half the sentences ({most} of {len(slots)})"
        )
    pool = [pool[int(p)] for p in rng.permutation(len(pool))]
    for i in range(len(pool)):
        while pool[i][1] == slots[i]:
            j = int(rng.integers(len(pool)))
            if pool[j][1] != slots[i] and pool[i][1] != slots[j]:
                pool[i], pool[j] = pool[j], pool[i]
    out, at = [], 0
    for d in docs:
        moved = pool[at : at + len(d.sentences)]
        out.append(Document(d.scene, d.kind, tuple(s for s, _ in moved), tuple(src for _, src in moved)))
        at += len(d.sentences)
    return out


def question_fragments() -> list[str]:
    """The fixed phrases of every question template of `questions.py`: each string literal there (plain or f-string)
    that ends with "?", cut at its placeholders, its "?" dropped; the pieces of two words or more (one word, such as
    "hit", is any statement's word; the "?" itself is refused apart)."""
    pieces: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(questions))):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = [node.value]
        else:
            continue
        if not (parts and isinstance(parts[-1], str) and parts[-1].endswith("?")):
            continue
        pieces |= {p.strip(" ?,") for p in parts if p is not None and len(p.strip(" ?,").split()) >= 2}
    return sorted(pieces)


def check_statements(docs: list[Document]) -> None:
    """Raise ValueError if a document holds a "?" or a fixed phrase of a question template (any case)."""
    pattern = re.compile("|".join(rf"\b{re.escape(f)}\b" for f in question_fragments()), re.IGNORECASE)
    for d in docs:
        if "?" in d.text or (m := pattern.search(d.text)):
            found = "?" if "?" in d.text else m.group(0)
            raise ValueError(f"knowledge document of scene {d.scene} ({d.kind}) holds {found!r}: {d.text}")


PROBES = {  # sentence forms whose last object slot has wrong alternatives: (kind, pattern)
    "cause": re.compile(r"^(?P<head>The (?P<x>\w+ \w+) changed direction because it hit )(?P<p>a wall|the \w+ \w+)\.$"),
    "next": re.compile(r"^(?P<head>The (?P<x>\w+ \w+) will hit )(?P<p>a wall|the \w+ \w+) next\.$"),
    "without": re.compile(
        r"^(?P<head>Without the (?P<z>\w+ \w+), the (?P<x>\w+ \w+) would hit )(?P<p>a wall|the \w+ \w+) first\.$"
    ),
}


@dataclass(frozen=True)
class ProbeItem:
    kind: str  # a key of PROBES
    context: str  # the document's sentences before the probed one
    true: str  # the probed sentence
    wrong: str  # the same sentence with another object of the scene, or a wall, as what is hit


def probe_items(docs: list[Document], seed: int, per_kind: int = 100) -> list[ProbeItem]:
    """Up to ``per_kind`` probe items of each kind from ``docs`` (knowledge documents): a cause, a next hit or a
    counterfactual first hit ("would hit", not "would still hit") with a wrong alternative drawn among the scene's
    other objects and "a wall" (never a sentence the scene's documents tell, such as a second cause); a model that
    knows the world gives the true sentence the higher likelihood."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, KNOWLEDGE_STREAM, 2]))
    told: dict[int, set[str]] = {}  # per scene, every sentence of its documents: a wrong one must not be among them
    for d in docs:
        told.setdefault(d.scene, set()).update(d.sentences)
    found: dict[str, list[ProbeItem]] = {k: [] for k in PROBES}
    for d in docs:
        names = re.findall(r"\ba (\w+ \w+)", d.sentences[0].split(":", 1)[1])
        for at, sentence in enumerate(d.sentences):
            for kind, pattern in PROBES.items():
                if (m := pattern.match(sentence)) is None:
                    continue
                named = {m.group("x"), m.groupdict().get("z")}
                others = [f"the {n}" for n in names if n not in named] + [questions.WALL]
                wrongs = [m.group("head") + o + sentence[m.end("p") :] for o in others]
                wrongs = [w for w in wrongs if w not in told[d.scene]]  # e.g. a second true cause
                if wrongs:
                    wrong = wrongs[int(rng.integers(len(wrongs)))]
                    found[kind].append(ProbeItem(kind, " ".join(d.sentences[:at]), sentence, wrong))
    return [it for kind in PROBES for it in _sample(found[kind], per_kind, rng)]


def _sample(items: list, n: int, rng: np.random.Generator) -> list:
    return [items[int(i)] for i in sorted(rng.permutation(len(items))[:n])]
