"""Multiple-choice results: per-question rows -> per-type accuracy tables, written as JSON and Markdown.

A row is ``{"key", "type", "prediction", "answer", "num_options"}`` (+ optional ``scores``, ``text``), as
`vrp.scoring.per_question.rows_from_batch` makes it from a scored batch. Accuracy uses
`PerTypeAccuracy`; chance is the mean of 1/num_options over a type's questions. Everything in percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from vrp.scoring.metrics import PerTypeAccuracy


def interval95(acc: float, n: int) -> float:
    """Half-width, in points, of the 95% normal-approximation interval of an accuracy ``acc`` (%) over ``n``
    questions: 1.96 * sqrt(p (1 - p) / n)."""
    p = acc / 100.0
    return 196.0 * math.sqrt(p * (1 - p) / n) if n else float("nan")


def paired_difference(rows: Sequence[Mapping], reference: Sequence[Mapping]) -> tuple[float, float, int]:
    """Accuracy of ``rows`` minus that of ``reference`` over the questions both scored (matched by ``key``), in
    points, with the half-width of its 95% interval from the per-question differences (each -1, 0 or 1):
    1.96 * sd / sqrt(n). Pairing removes the questions' own difficulty, so the interval of a difference between two
    models on one test set is narrower than either model's own. Returns (difference, half-width, n)."""
    ref = {r["key"]: r["prediction"] == r["answer"] for r in reference}
    d = [float(r["prediction"] == r["answer"]) - float(ref[r["key"]]) for r in rows if r["key"] in ref]
    if len(d) < 2:
        raise ValueError(f"paired_difference: only {len(d)} question key(s) in common; were both run on one split?")
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return 100.0 * mean, 196.0 * math.sqrt(var / len(d)), len(d)


def check_groups(groups: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Question-type families (e.g. NExT-QA's ``{"causal": ["CW", "CH"], "temporal": ["TN", "TC", "TP"],
    "descriptive": ["DC", "DL", "DO"]}``) as plain lists; a code in two families, or a family named like a code,
    is an error."""
    out = {str(name): [str(c) for c in codes] for name, codes in (groups or {}).items()}
    seen: dict[str, str] = {}
    for name, codes in out.items():
        if not codes:
            raise ValueError(f"type_groups: family {name!r} lists no question types")
        for code in codes:
            if code in seen:
                raise ValueError(f"type_groups: question type {code!r} is in both {seen[code]!r} and {name!r}")
            if code in out:
                raise ValueError(f"type_groups: {code!r} is both a family and a question type of {name!r}")
            seen[code] = name
    return out


def expand_types(names: Iterable[str], groups: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Question types named by ``names``: a family stands for its codes, anything else for itself."""
    groups = check_groups(groups)
    return sorted({t for n in names for t in groups.get(n, [n])})


def _share(group: Sequence[Mapping], key: str) -> float:
    if key == "chance":
        return 100.0 * sum(1 / r["num_options"] for r in group) / len(group)
    return 100.0 * sum(r["prediction"] == r["answer"] for r in group) / len(group)


def accuracy_table(
    rows: Sequence[Mapping], held_out: Iterable[str] = (), groups: Mapping[str, Sequence[str]] | None = None
) -> dict:
    """``{"accuracy": {type: %, "overall": %}, "chance": {...}, "counts": {...}, "held_out": [...],
    "groups": {family: [types]}}``. With ``groups`` each family present gets a row (over its codes' questions)
    followed by its codes, in the order given, then the ungrouped types; held-out (zero-shot) types (or families,
    which hold out their codes) also get ``seen``/``unseen`` aggregate rows when both kinds are present."""
    groups = check_groups(groups)
    held_names = set(held_out)
    held_types = set(expand_types(held_names, groups))
    present = {r["type"] for r in rows}
    grouped = [c for codes in groups.values() for c in codes]
    order = [t for t in grouped if t in present] + sorted(present - set(grouped))
    metric = PerTypeAccuracy(order, sync_on_compute=False)  # rows are complete here (gathered from every rank)
    if rows:
        metric.update(
            torch.tensor([r["prediction"] for r in rows]),
            torch.tensor([r["answer"] for r in rows]),
            [r["type"] for r in rows],
        )
    per_type = {t: 100.0 * a for t, a in metric.compute().items()} if rows else {}
    type_counts = metric.counts() if rows else {}
    acc, chance, counts, families = {}, {}, {}, {}
    for name in [*groups, *(t for t in order if t not in grouped)]:
        codes = [c for c in groups.get(name, [name]) if c in present]
        if not codes:
            continue
        if name in groups:
            group = [r for r in rows if r["type"] in codes]
            acc[name], chance[name], counts[name] = _share(group, "accuracy"), _share(group, "chance"), len(group)
            families[name] = codes
        for t in codes:
            acc[t], counts[t] = per_type[t], type_counts[t]
            chance[t] = _share([r for r in rows if r["type"] == t], "chance")
    if rows:
        acc["overall"], chance["overall"], counts["overall"] = per_type["overall"], _share(rows, "chance"), len(rows)
    for name, group in (
        ("seen", [r for r in rows if r["type"] not in held_types]),
        ("unseen", [r for r in rows if r["type"] in held_types]),
    ):
        if held_types and group and len(group) < len(rows):
            acc[name], chance[name], counts[name] = _share(group, "accuracy"), _share(group, "chance"), len(group)
    marked = held_types | {n for n in held_names if n in groups}
    return {"accuracy": acc, "chance": chance, "counts": counts, "held_out": sorted(marked), "groups": families}


def _label(table: Mapping, t: str) -> str:
    """A row's name: family codes indented under their family (``↳ CW``), held-out rows marked."""
    sub = any(t in codes for codes in table.get("groups", {}).values())
    name = f"↳ {t}" if sub else t
    return f"{name} (held out)" if t in table.get("held_out", ()) else name


def markdown_table(table: Mapping, blind: Mapping[str, float] | None = None) -> str:
    """Per-type table: n, accuracy, chance (and a blind baseline column when given, in %)."""
    head = "| question type | n | accuracy (%) | chance (%) |" + (" blind (%) |" if blind else "")
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if blind else "")]
    for t, a in table["accuracy"].items():
        line = f"| {_label(table, t)} | {table['counts'][t]} | {a:.1f} | {table['chance'].get(t, float('nan')):.1f} |"
        if blind:
            line += f" {blind[t]:.1f} |" if t in blind else " – |"
        lines.append(line)
    return "\n".join(lines)


def comparison_table(tables: Mapping[str, Mapping], blind: Mapping[str, float] | None = None) -> str:
    """Models side by side (columns) per question type (rows), plus chance (and the data's blind prior) in %."""
    names = list(tables)
    types: list[str] = []
    for t in tables.values():
        types += [k for k in t["accuracy"] if k not in types]
    held_by = {t: [n for n in names if t in tables[n].get("held_out", ())] for t in types}
    chance: dict[str, float] = {}
    for table in tables.values():  # the same questions in every run; seen/unseen rows only where held out
        for t, c in table["chance"].items():
            chance.setdefault(t, c)
    cols = names + ["chance"] + (["blind prior"] if blind else [])
    lines = ["| question type | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for t in types:
        cells = [f"{tables[n]['accuracy'][t]:.1f}" if t in tables[n]["accuracy"] else "–" for n in names]
        cells.append(f"{chance.get(t, float('nan')):.1f}")
        if blind:
            cells.append(f"{blind[t]:.1f}" if t in blind else "–")
        label = f"{t} (held out in {', '.join(held_by[t])})" if held_by[t] else t
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def skipped_line(skipped: Sequence[Mapping]) -> str:
    """One line for the questions evaluation could not read (``{"key", "reason"}`` each): how many, why."""
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    return f"Skipped {len(skipped)} question(s) whose sample could not be read ({why}); not counted above."


def write_results(
    out_dir: str | Path,
    rows: Sequence[Mapping],
    *,
    name: str = "test_results",
    held_out: Iterable[str] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
    extra: Mapping | None = None,
    blind: Mapping[str, float] | None = None,
    skipped: Sequence[Mapping] = (),
) -> tuple[Path, Path, dict]:
    """Write ``<name>.json`` (table + rows + skipped + extra) and ``<name>.md`` (with a ``blind`` column when given,
    in %, and a line for the skipped questions); returns both paths and the table (families from ``groups`` as in
    `accuracy_table`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = accuracy_table(rows, held_out, groups)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps({**table, **(extra or {}), "skipped": list(skipped), "rows": list(rows)}, indent=1))
    md_path.write_text(markdown_table(table, blind) + "\n" + (f"\n{skipped_line(skipped)}\n" if skipped else ""))
    return json_path, md_path, table


def load_blind_baseline(meta_json: str | Path, split: str = "test") -> dict[str, float] | None:
    """Per-type best blind text-prior accuracy (%) that the synthetic generator stores in ``meta.json``
    (``baselines[split][type]["best_text_prior"]``); None if absent."""
    path = Path(meta_json)
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    base = (meta.get("baselines") or {}).get(split)
    if not isinstance(base, Mapping):
        return None
    out = {}
    for t, v in base.items():
        value = v.get("best_text_prior") if isinstance(v, Mapping) else v
        if isinstance(value, (int, float)):
            out[t] = 100.0 * value
    return out or None
