"""2D billiards: discs with constant velocity bouncing elastically off the walls and off each other.

Physics treats every object as a disc of its radius (the rendered shape sits inside it). Equal masses, so an
object-object collision swaps the velocity components along the line of centres. The simulator keeps an event log
(which objects hit what, at which frame), per-frame boxes, can run past the observed clip, and can re-run a scene
with one object removed (`Scene.without`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 220, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
WALLS: tuple[str, ...] = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    radius: float  # pixels
    pos: tuple[float, float]  # (x, y) pixels at frame 0
    vel: tuple[float, float]  # pixels per frame

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Event:
    """A collision. `other` is an object index or a wall name; object pairs are stored with a < b."""

    frame: int  # first frame drawn after the contact
    time: float  # contact time in frames
    a: int
    other: int | str

    @property
    def is_wall(self) -> bool:
        return isinstance(self.other, str)

    def involves(self, i: int) -> bool:
        return self.a == i or self.other == i

    def partner(self, i: int) -> int | str:
        """What object `i` hit in this event (an object index or 'wall')."""
        if self.is_wall:
            return "wall"
        return self.other if self.a == i else self.a


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    size: int  # square arena side in pixels

    def without(self, i: int) -> Scene:
        return replace(self, objects=self.objects[:i] + self.objects[i + 1 :])


@dataclass
class Trajectory:
    positions: np.ndarray  # (F, K, 2) float, pixels
    velocities: np.ndarray  # (F, K, 2) float, pixels per frame
    events: list[Event] = field(default_factory=list)

    def boxes(self, radii: np.ndarray, size: int) -> np.ndarray:
        """(F, K, 4) xyxy boxes normalised to [0, 1]."""
        r = radii[None, :, None]
        return np.clip(np.concatenate([self.positions - r, self.positions + r], axis=-1) / size, 0.0, 1.0)

    def events_of(self, i: int, start: int = 0, stop: int | None = None) -> list[Event]:
        return [e for e in self.events if e.involves(i) and e.frame >= start and (stop is None or e.frame < stop)]


def simulate(scene: Scene, num_frames: int, substeps: int = 4) -> Trajectory:
    """Integrate `num_frames` frames (frame 0 = initial state), logging every collision.

    Plain Python floats: with at most a handful of objects this beats numpy's per-call overhead several times.
    """
    k, size = len(scene.objects), scene.size
    px = [o.pos[0] for o in scene.objects]
    py = [o.pos[1] for o in scene.objects]
    vx = [o.vel[0] for o in scene.objects]
    vy = [o.vel[1] for o in scene.objects]
    rad = [o.radius for o in scene.objects]
    positions = np.zeros((num_frames, k, 2))
    velocities = np.zeros((num_frames, k, 2))
    events: list[Event] = []
    dt = 1.0 / substeps
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    for f in range(num_frames):
        positions[f, :, 0], positions[f, :, 1] = px, py
        velocities[f, :, 0], velocities[f, :, 1] = vx, vy
        if f == num_frames - 1:
            break
        for s in range(substeps):
            t = f + (s + 1) * dt
            for i in range(k):
                px[i] += vx[i] * dt
                py[i] += vy[i] * dt
                r = rad[i]
                if px[i] < r and vx[i] < 0:
                    px[i], vx[i] = 2 * r - px[i], -vx[i]
                    events.append(Event(f + 1, t, i, "left"))
                elif px[i] > size - r and vx[i] > 0:
                    px[i], vx[i] = 2 * (size - r) - px[i], -vx[i]
                    events.append(Event(f + 1, t, i, "right"))
                if py[i] < r and vy[i] < 0:
                    py[i], vy[i] = 2 * r - py[i], -vy[i]
                    events.append(Event(f + 1, t, i, "top"))
                elif py[i] > size - r and vy[i] > 0:
                    py[i], vy[i] = 2 * (size - r) - py[i], -vy[i]
                    events.append(Event(f + 1, t, i, "bottom"))
            for i, j in pairs:
                dx, dy = px[j] - px[i], py[j] - py[i]
                reach = rad[i] + rad[j]
                d2 = dx * dx + dy * dy
                if d2 >= reach * reach or d2 == 0.0:
                    continue
                dist = math.sqrt(d2)
                nx, ny = dx / dist, dy / dist
                approach = (vx[i] - vx[j]) * nx + (vy[i] - vy[j]) * ny
                if approach <= 0:  # already separating
                    continue
                vx[i] -= approach * nx
                vy[i] -= approach * ny
                vx[j] += approach * nx
                vy[j] += approach * ny
                events.append(Event(f + 1, t, i, j))
    return Trajectory(positions, velocities, events)


def random_scene(
    rng: np.random.Generator,
    *,
    size: int = 128,
    num_objects: int,
    radius: tuple[float, float] = (10.0, 14.0),
    speed: tuple[float, float] = (1.2, 3.2),
) -> Scene:
    """Objects of distinct colours (shapes may repeat), placed without overlap; sizes/speeds scale with `size`."""
    scale = size / 128
    colors = rng.choice(len(COLORS), size=num_objects, replace=False)
    objects: list[Obj] = []
    while len(objects) < num_objects:
        r = float(rng.uniform(*radius)) * scale
        p = rng.uniform(r + 1, size - r - 1, size=2)
        if any(np.hypot(*(p - o.pos)) < r + o.radius + 4 * scale for o in objects):
            continue
        angle = float(rng.uniform(0, 2 * np.pi))
        v = float(rng.uniform(*speed)) * scale
        objects.append(
            Obj(
                color=list(COLORS)[int(colors[len(objects)])],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                radius=r,
                pos=(float(p[0]), float(p[1])),
                vel=(v * np.cos(angle), v * np.sin(angle)),
            )
        )
    return Scene(tuple(objects), size)
