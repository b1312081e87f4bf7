"""Learned object dynamics: an interaction network over tracked boxes, trained without labels to predict how each
object's motion changes from one box row to the next (interaction networks; SlotFormer's roll-outs, over boxes).

The state of object k at box row r is its centre, size and the centre motion into the row. A relation network
reads every ordered pair (k <- j): both states and their relation geometry (centre offset, distance, the gap
between the boxes, relative motion); an environment network reads each object alone (what acts on it that is no
tracked object: a boundary, the ground, an untracked object). Each source has a gate in (0, 1) and a bounded push;
the gated pushes, summed, predict the change of the object's motion out of the row (a push cannot grow to make up
for a small gate, so the gate carries how much a source acts). A sparsity penalty on
the gates makes them fire only where something changed a motion, so after stage 0 (`vrp prepare
--dynamics-steps`, on tracks with no labels) ``gates`` say who acted on whom and when, learnt from motion alone,
and `InteractionDynamics.rollout` integrates the predicted motion forward to boxes after the clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE_FEATURES = 6  # centre (2), size (2), centre motion into the row (2, x MOTION_SCALE)
PAIR_FEATURES = 7  # centre offset (2), distance, box gap, motion difference (2, x MOTION_SCALE), overlap
MOTION_SCALE = 10.0  # centre motion is ~0.01-0.1 of the frame per row
MAX_CHANGE = 0.4  # the most one source can change a motion in a row (x MOTION_SCALE): about a reversal


def centre_motion(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R, K, 4) xyxy, (B, R, K) mask -> centres (B, R, K, 2) and the centre motion into and out of each row
    (B, R, K, 2) each, 0 where the row or its neighbour is absent (and into the first / out of the last row)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    step = (centre[:, 1:] - centre[:, :-1]) * (mask[:, 1:] & mask[:, :-1])[..., None]  # (B, R-1, K, 2)
    zero = torch.zeros_like(centre[:, :1])
    return centre, torch.cat([zero, step], dim=1), torch.cat([step, zero], dim=1)


def has_previous(mask: torch.Tensor) -> torch.Tensor:
    """(B, R, K) mask -> (B, R, K): the box and the one a row before are both present (the motion into the row is
    known); False on the first row."""
    return torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:] & mask[:, :-1]], dim=1)


def box_gaps(boxes: torch.Tensor) -> torch.Tensor:
    """(B, R, K, 4) xyxy -> (B, R, K, K): the gap between every two boxes of a row (Chebyshev; < 0: overlapping)."""
    centre, half = (boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]) / 2  # (B, R, K, 2)
    offset = (centre[:, :, None] - centre[:, :, :, None]).abs()  # (B, R, K, K, 2)
    return (offset - half[:, :, None] - half[:, :, :, None]).amax(-1)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_out)
    )


class InteractionDynamics(nn.Module):
    """Gated interaction network over box rows: ``forward(boxes (B, R, K, 4), mask (B, R, K))`` -> the predicted
    change of each centre motion out of each row (B, R, K, 2) (x ``MOTION_SCALE``) and the gates (B, R, K, K + 1):
    ``gates[..., k, j]`` how much object j acts on object k at that row, the last column the environment."""

    def __init__(self, hidden_size: int = 64, gate_penalty: float = 0.01):
        super().__init__()
        self.config = {"hidden_size": hidden_size, "gate_penalty": gate_penalty}
        self.gate_penalty = gate_penalty
        self.relation = _mlp(2 * STATE_FEATURES + PAIR_FEATURES, hidden_size, hidden_size + 1)  # effect, gate logit
        self.environment = _mlp(STATE_FEATURES, hidden_size, hidden_size + 1)
        self.head = nn.Linear(hidden_size, 2)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> InteractionDynamics:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no dynamics model at {path} (config.json missing); build it with `vrp prepare --dynamics-steps N`"
            )
        model = cls(**json.loads((path / "config.json").read_text()))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    def forward(self, boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, R, K, _ = boxes.shape
        boxes = boxes.masked_fill(~mask[..., None], 0.0)
        centre, into, _ = centre_motion(boxes, mask)
        size = boxes[..., 2:] - boxes[..., :2]
        state = torch.cat([centre, size, into * MOTION_SCALE], dim=-1)  # (B, R, K, 6)
        return self.step(state, boxes, mask & has_previous(mask))

    def step(self, state: torch.Tensor, boxes: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state (B, R, K, 6), boxes (B, R, K, 4), ``known`` (B, R, K): present with a known motion ->
        (change of motion (B, R, K, 2), gates (B, R, K, K + 1)); rows not ``known`` get no gate and no change."""
        K = state.shape[2]
        me, other = state[:, :, :, None].expand(-1, -1, -1, K, -1), state[:, :, None].expand(-1, -1, K, -1, -1)
        offset = other[..., :2] - me[..., :2]  # (B, R, K, K, 2): j's centre minus k's
        gap = box_gaps(boxes)[..., None]
        geometry = torch.cat(
            [offset, offset.norm(dim=-1, keepdim=True), gap, other[..., 4:] - me[..., 4:], (gap < 0).to(gap.dtype)],
            dim=-1,
        )
        rel = self.relation(torch.cat([me, other, geometry], dim=-1))  # (B, R, K, K, H + 1)
        env = self.environment(state)  # (B, R, K, H + 1)
        pair = known[:, :, :, None] & known[:, :, None] & ~torch.eye(K, dtype=torch.bool, device=state.device)
        gates = torch.cat([rel[..., -1].sigmoid() * pair, env[..., -1:].sigmoid() * known[..., None]], dim=-1)
        effects = torch.cat([rel[..., :-1], env[:, :, :, None, :-1]], dim=3)  # (B, R, K, K + 1, H)
        push = MAX_CHANGE * torch.tanh(self.head(effects))  # (B, R, K, K + 1, 2): each source's push, bounded
        change = (gates[..., None] * push).sum(3)  # (B, R, K, 2): only a gate can make a push count
        return change * known[..., None], gates

    def loss(self, boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Self-supervised: the squared error of the predicted change of motion at every row whose motion in and out
        is known, relative to the batch's mean squared change (predicting constant motion scores 1), plus ``gate_penalty`` x the mean gate. -> (loss, {"motion": ..., "gates": ...})."""
        _, into, out = centre_motion(boxes, mask)
        known = mask & has_previous(mask) & torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        change, gates = self(boxes, mask)
        target = (out - into) * MOTION_SCALE
        err = ((change - target) ** 2).sum(-1)[known]
        energy = (target**2).sum(-1)[known].mean().clamp(min=1e-8)  # constant motion scores 1: the loss is relative
        motion = err.mean() / energy if err.numel() else change.sum() * 0.0
        gate = gates.sum(-1)[known].mean() if err.numel() else gates.sum() * 0.0
        return motion + self.gate_penalty * gate, {"motion": motion.item(), "gates": gate.item()}

    @torch.no_grad()
    def rollout(
        self, boxes: torch.Tensor, mask: torch.Tensor, steps: int, recent: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll each object on from its last present row for ``steps`` rows: boxes (B, R, K, 4), mask (B, R, K) ->
        future boxes (B, steps, K, 4), their gates (B, steps, K, K + 1) and which objects are rolled (B, K): those
        present in the last ``recent`` rows (the others are zero). Sizes are kept; an object whose motion into its
        last row is unknown starts at rest."""
        B, R, K, _ = boxes.shape
        boxes = boxes.masked_fill(~mask[..., None], 0.0)
        last = (R - 1 - mask.flip(1).int().argmax(1))[:, None, :, None]  # (B, 1, K, 1): each object's last row
        alive = mask[:, R - recent :].any(1)  # (B, K)
        centre, into, _ = centre_motion(boxes, mask)
        c = centre.gather(1, last.expand(B, 1, K, 2))  # (B, 1, K, 2)
        v = into.gather(1, last.expand(B, 1, K, 2))
        size = (boxes[..., 2:] - boxes[..., :2]).gather(1, last.expand(B, 1, K, 2))
        known = alive[:, None]  # (B, 1, K)
        rows, gates = [], []
        for _ in range(steps):
            box = torch.cat([c - size / 2, c + size / 2], dim=-1) * known[..., None]
            change, g = self.step(torch.cat([c, size, v * MOTION_SCALE], dim=-1), box, known)
            v = v + change / MOTION_SCALE
            c = c + v
            rows.append(torch.cat([c - size / 2, c + size / 2], dim=-1) * known[..., None])
            gates.append(g)
        return torch.cat(rows, dim=1), torch.cat(gates, dim=1), alive


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a (persistent) buffer: it moves with ``.to()`` and is saved in
    state dicts, but no optimiser, ``requires_grad_`` or training mode of an enclosing model can change it. For a
    stage-0 model that a trainable part reads and must not retrain (the dynamics inside a fusion)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach())
    return module.eval()


class InteractionMessages(nn.Module):
    """What acts on each (object, frame) token, from a stage-0 `InteractionDynamics`' gates: the gates of the frame's
    S box rows (their maximum per source) weight the other objects' appearance and a learned environment vector,
    projected to one message; and how strongly each source acts, summed, as a second input. "What did X hit" becomes
    a read of X's own tokens, with the partner found by a model of motion instead of a threshold on gaps."""

    def __init__(self, hidden_size: int, box_substeps: int):
        super().__init__()
        self.box_substeps = box_substeps
        self.environment = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.strength = nn.Linear(2, hidden_size)

    def forward(self, gates: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """gates (B, T * S, K, K + 1), per-object appearance (B, K, H) -> messages (B, T, K, H)."""
        B, TS, K, _ = gates.shape
        w = gates.view(B, TS // self.box_substeps, self.box_substeps, K, K + 1).amax(2)  # (B, T, K, K + 1)
        values = torch.cat([appearance, self.environment.expand(B, 1, -1)], dim=1)  # (B, K + 1, H)
        strength = torch.stack([w[..., :K].sum(-1), w[..., K]], dim=-1)  # (B, T, K, 2): objects, environment
        return self.out(torch.einsum("btkj,bjh->btkh", w, values)) + self.strength(strength)
