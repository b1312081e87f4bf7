"""Per-question rows of scored batches: one dict per question (`rows_from_batch`, what the results tables count) and what
`vrp predict` writes per sample (`prediction_rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vrp.scoring.scorers import MCOutput


def rows_from_batch(batch: Mapping, out: MCOutput) -> list[dict]:
    """One row per question of a scored multiple-choice batch."""
    n = len(out.prediction)
    types = batch.get("question_type") or ["all"] * n
    keys = batch.get("keys") or [""] * n
    rows = []
    for i in range(n):
        row = {
            "key": keys[i],
            "type": types[i] or "all",
            "prediction": int(out.prediction[i]),
            "answer": int(batch["answer_index"][i]),
            "num_options": len([o for o in batch["options"][i] if o]),
            "scores": [round(float(s), 5) for s in out.scores[i] if s != float("-inf")],
        }
        if out.text is not None:
            row["text"] = out.text[i]
        rows.append(row)
    return rows


def prediction_rows(batch: Mapping, out: MCOutput | None, generated: Sequence[str] | None = None) -> list[dict]:
    """What `vrp predict` writes per sample: ``{"key", "type", "prompt", "choice", "option", "scores", "answer"}``
    for a multiple-choice batch (``out``), ``{"key", "type", "prompt", "generated"}`` for an open one, and
    ``{"key", "skipped": reason}`` for each sample that could not be read."""
    rows = [{"key": s["key"], "skipped": s["reason"]} for s in batch.get("skipped", [])]
    keys = batch.get("keys", [])
    types = batch.get("question_type") or [None] * len(keys)
    prompts = batch.get("prompt") or [None] * len(keys)
    mc = rows_from_batch(batch, out) if out is not None else []
    for i, key in enumerate(keys):
        row = {"key": key, "type": types[i] or None, "prompt": prompts[i]}
        if out is not None:
            choice = mc[i]["prediction"]
            row.update(
                choice=choice,
                option=batch["options"][i][choice] if choice >= 0 else None,
                scores=mc[i]["scores"],
                answer=mc[i]["answer"],
            )
            if "text" in mc[i]:
                row["generated"] = mc[i]["text"]
        else:
            row["generated"] = generated[i]
        rows.append(row)
    return rows
