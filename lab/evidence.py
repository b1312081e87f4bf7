"""Per-type accuracy of one model on several evaluation sets side by side, with 95% intervals, chance and the gap.

    python -m lab evidence --results test=runs/embedded/finetune --results fresh-4711=runs/evidence/fresh-4711
                           [--target 25]

Each `--results NAME=DIR` names a folder holding a `test_results.json` (`vrp test` writes one; the newest below DIR
is read, e.g. runs/embedded/finetune/test/version_N/). The interval is the
normal approximation of the binomial, ±1.96·sqrt(p(1-p)/n); `--target` marks the types at least that many points
above chance. `make evidence` generates a fresh-seed set, tests the fine-tuned model on it and calls this.
"""

from __future__ import annotations

import argparse
import json

from vrp.evaluation.report import find_file
from vrp.evaluation.results import interval95

TYPES = ("descriptive", "temporal", "explanatory", "predictive", "counterfactual", "overall")


def table(results: dict[str, dict], target: float) -> str:
    names = list(results)
    head = "| question type | " + " | ".join(f"{n}: n | {n}: accuracy | {n}: chance | {n}: − chance" for n in names)
    lines = [head + " |", "|---|" + "---:|" * (4 * len(names))]
    types = [t for t in TYPES if any(t in r["accuracy"] for r in results.values())]
    types += sorted({t for r in results.values() for t in r["accuracy"]} - set(types))
    for t in types:
        cells = []
        for r in results.values():
            if t not in r["accuracy"]:
                cells += ["–"] * 4
                continue
            acc, n, chance = r["accuracy"][t], r["counts"][t], r["chance"][t]
            mark = " ✓" if acc - chance >= target else ""
            cells += [f"{n:,}", f"{acc:.1f} ± {interval95(acc, n):.1f}", f"{chance:.1f}", f"{acc - chance:+.1f}{mark}"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lab evidence", description=__doc__.splitlines()[0])
    p.add_argument("--results", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--target", type=float, default=25.0, help="points above chance that earn a ✓")
    a = p.parse_args(argv)
    results = {}
    for spec in a.results:
        name, _, folder = spec.partition("=")
        try:
            path = find_file(folder, "test_results.json")
        except FileNotFoundError:
            path = None
        if not name or path is None:
            raise SystemExit(
                f"evidence: --results {spec!r} needs NAME=DIR with a test_results.json below DIR (run vrp test)"
            )
        results[name] = json.loads(path.read_text())
        print(f"{name}: {path}")
    print(table(results, a.target))
    print(f"\n± is the 95% interval; ✓: at least {a.target:g} points above chance.")
