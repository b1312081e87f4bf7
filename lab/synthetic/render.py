"""Anti-aliased numpy rendering: each shape's coverage is computed on a supersampled grid inside its box only."""

from __future__ import annotations

import numpy as np

from lab.synthetic.simulator import COLORS, Scene

BACKGROUND = (40, 40, 40)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of sample offsets (dx, dy) from the centre that fall inside `shape` of radius `r`."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        h = r * 0.8
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # upward equilateral triangle inscribed in the circle
        y0 = r * 0.5  # base line (y grows downwards)
        slope = np.sqrt(3.0)
        return (dy <= y0) & (dy >= -r + slope * np.abs(dx))
    if shape == "cross":
        arm = r * 0.38
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r * 0.95)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r * 0.95))
    raise ValueError(f"unknown shape {shape!r}; expected one of circle, square, triangle, cross")


def render_frames(scene: Scene, positions: np.ndarray, supersample: int = 4) -> np.ndarray:
    """Draw objects at `positions` (F, K, 2) over a flat background -> uint8 (F, H, W, 3)."""
    num_frames = positions.shape[0]
    size = scene.size
    out = np.empty((num_frames, size, size, 3), dtype=np.float32)
    out[:] = np.asarray(BACKGROUND, dtype=np.float32)
    offs = (np.arange(supersample) + 0.5) / supersample  # sample positions inside a pixel
    for f in range(num_frames):
        frame = out[f]
        for k, obj in enumerate(scene.objects):
            cx, cy = positions[f, k]
            r = obj.radius
            x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 1, size)
            y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 1, size)
            xs = (np.arange(x0, x1)[:, None] + offs[None, :]).reshape(-1) - cx  # (W*s,)
            ys = (np.arange(y0, y1)[:, None] + offs[None, :]).reshape(-1) - cy  # (H*s,)
            mask = _inside(obj.shape, xs[None, :], ys[:, None], r)  # (H*s, W*s)
            cover = mask.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))[..., None]
            color = np.asarray(COLORS[obj.color], dtype=np.float32)
            patch = frame[y0:y1, x0:x1]
            patch += cover * (color - patch)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
