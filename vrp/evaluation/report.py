"""`make report`: a Markdown page with PNG plots from finished runs.

    python -m vrp.evaluation.report --results model=runs/embedded/finetune --results blind=runs/baselines/blind \\
        --curves stage1=runs/embedded/pretrain --curves stage2=runs/embedded/finetune \\
        [--checkpoint artifacts/embedded/finetune --data data/synthetic/test/mc.csv --clips 3] --out artifacts/report

- training curves: every ``metrics.csv`` (Lightning CSVLogger) under each ``--curves`` folder, loss columns vs step;
- per-type accuracy bars of the model and the baselines (``test_results.json`` found under each ``--results``);
- the comparison (ablation) table, with chance and the synthetic data's blind text prior (``meta.json``);
- with ``--checkpoint``: for a few test clips the sampled frames, the question, options, the model's answer and the
  Q-Former's cross-attention over frames and patches (`vrp.evaluation.attention`) as heatmaps.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vrp.evaluation.results import comparison_table, load_blind_baseline  # noqa: E402
from vrp.runs import OWN_FOLDER_SUBCOMMANDS  # noqa: E402


def find_file(folder: str | Path, name: str, *, training_only: bool = False) -> Path:
    """``folder/name``, else the newest ``name`` below it; ``training_only`` leaves out the folders of evaluation
    runs (``test/``, ``validate/``, ``predict/`` made by `vrp.runs`), whose logs hold no training curves."""
    folder = Path(folder)
    if (folder / name).is_file():
        return folder / name
    found = [
        p
        for p in folder.rglob(name)
        if not (training_only and set(p.relative_to(folder).parts[:-1]) & set(OWN_FOLDER_SUBCOMMANDS))
    ]
    found = sorted(found, key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {name} under {folder}; has the run finished (and been tested)?")
    return found[-1]  # the newest


def read_curves(folder: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Loss and accuracy columns (``*loss*``, ``val/acc*``) of the newest training ``metrics.csv`` under ``folder``:
    {column: (steps, values)}."""
    path = find_file(folder, "metrics.csv", training_only=True)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for col, value in row.items():
                if ("loss" in col or col.startswith("val/acc")) and value not in ("", None):
                    steps, values = curves.setdefault(col, ([], []))
                    steps.append(float(row.get("step") or len(steps)))
                    values.append(float(value))
    return curves


def plot_curves(curves: Mapping[str, Mapping[str, tuple[list[float], list[float]]]], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (stage, cols) in zip(axes[0], curves.items()):
        acc_ax = None
        for col, (steps, values) in sorted(cols.items()):
            is_acc = col.startswith("val/acc")
            if is_acc and acc_ax is None:  # accuracy (%) on a second axis: the answer loss flattens before it does
                acc_ax = ax.twinx()
                acc_ax.set_ylabel("validation accuracy (%)")
            target = acc_ax if is_acc else ax
            target.plot(
                steps, values, label=col, linestyle="--" if is_acc else "-", marker="." if len(steps) < 30 else None
            )
        ax.set(title=stage, xlabel="step", ylabel="loss")
        handles = [h for a in (ax, acc_ax) if a is not None for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy(tables: Mapping[str, Mapping], out: Path, blind: Mapping[str, float] | None = None) -> Path:
    types = [t for t in next(iter(tables.values()))["accuracy"]]
    width = 0.8 / (len(tables) + 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(types)), 3.8))
    for i, (name, table) in enumerate(tables.items()):
        ax.bar(
            [x + i * width for x in range(len(types))], [table["accuracy"].get(t, 0) for t in types], width, label=name
        )
    chance = next(iter(tables.values()))["chance"]
    ax.bar(
        [x + len(tables) * width for x in range(len(types))],
        [chance.get(t, 0) for t in types],
        width,
        label="chance",
        color="lightgrey",
    )
    if blind:
        ax.scatter(
            [x + len(tables) * width for x in range(len(types))],
            [blind.get(t, float("nan")) for t in types],
            marker="_",
            s=300,
            color="black",
            label="blind text prior",
            zorder=3,
        )
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(types))], types, rotation=20)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title="test accuracy per question type")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_clip(frames: torch.Tensor, attention: torch.Tensor | None, title: str, out: Path) -> Path:
    """frames uint8 (T, C, H, W); attention (T, gh, gw) overlaid (bilinear upsampled) on the second row."""
    T = frames.shape[0]
    rows = 2 if attention is not None else 1
    fig, axes = plt.subplots(rows, T, figsize=(1.6 * T, 1.7 * rows + 0.6), squeeze=False)
    H, W = frames.shape[-2:]
    for t in range(T):
        img = frames[t].permute(1, 2, 0).numpy()
        axes[0, t].imshow(img)
        axes[0, t].set_title(f"t{t}", fontsize=7)
        if attention is not None:
            heat = torch.nn.functional.interpolate(attention[t][None, None].float(), size=(H, W), mode="bilinear")[0, 0]
            axes[1, t].imshow(img)
            axes[1, t].imshow(heat.numpy(), alpha=0.6, cmap="inferno", vmin=0, vmax=float(attention.max()))
            axes[1, t].set_title(f"{100 * float(attention[t].sum()):.0f}%", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def clip_examples(model: torch.nn.Module, mc_csv: str, n: int, out: Path, num_frames: int = 8) -> list[str]:
    """Markdown blocks for the first ``n`` questions of a NExT-QA-layout CSV: frames, Q, options, answer, attention.
    Each clip is read as `vrp ask` reads it (`vrp.evaluation.inference.clip_loader`): the fusion's box rows, and the
    model's object stage for a model that reads tracks."""
    from data_modules.collate import Collator
    from data_modules.skips import SkipCounter
    from data_modules.sources import MultipleChoice
    from data_modules.sources.record import strip_placeholder
    from data_modules.video import read_video
    from vrp.evaluation.attention import cross_attention_maps
    from vrp.evaluation.inference import clip_loader
    from vrp.scoring.scorers import LikelihoodScorer

    records = MultipleChoice(mc_csv, template="<video>\n{question}", target="text").load(SkipCounter(1.0))[:n]
    loader = clip_loader(model, num_frames=num_frames)
    collate = Collator(model.llm.tokenizer)
    blocks = []
    for i, rec in enumerate(records):
        batch = collate([loader(rec)])
        pred = int(LikelihoodScorer()(model, batch).prediction[0])
        try:
            attention = cross_attention_maps(model, batch)[0]
        except ValueError:
            attention = None
        frames = read_video(rec.video, num_frames, sampling="uniform").frames
        png = plot_clip(frames, attention, strip_placeholder(rec.turns[0][0]), out / f"clip_{i}.png")
        options = "; ".join(f"**{o}**" if j == rec.answer_index else o for j, o in enumerate(rec.options))
        mark = "correct" if pred == rec.answer_index else "wrong"
        blocks.append(
            f"### {rec.key} ({rec.question_type})\n\n{rec.turns[0][0].replace('<video>', '').strip()}  \n"
            f"options: {options}  \nmodel: *{rec.options[pred]}* ({mark})\n\n![{rec.key}]({png.name})\n"
        )
    return blocks


def build_report(
    out: str | Path,
    results: Mapping[str, str],
    curves: Mapping[str, str] | None = None,
    *,
    meta: str | None = None,
    model: torch.nn.Module | None = None,
    mc_csv: str | None = None,
    clips: int = 3,
) -> Path:
    """Write ``<out>/report.md`` (+ PNGs); returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# vrp report", ""]
    if curves:
        plot_curves({stage: read_curves(folder) for stage, folder in curves.items()}, out / "curves.png")
        lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    tables = {name: json.loads(find_file(folder, "test_results.json").read_text()) for name, folder in results.items()}
    blind = load_blind_baseline(meta) if meta else None
    if tables:
        plot_accuracy(tables, out / "accuracy.png", blind)
        lines += [
            "## Test accuracy per question type (%)",
            "",
            "![accuracy](accuracy.png)",
            "",
            comparison_table(tables, blind),
            "",
        ]
    if model is not None and mc_csv:
        lines += ["## Examples", "", *clip_examples(model, mc_csv, clips, out)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        name, sep, folder = v.partition("=")
        if not sep:
            raise SystemExit(f"error: {flag} takes NAME=FOLDER, got {v!r}")
        out[name] = folder
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vrp.evaluation.report", description=__doc__.split("\n")[0])
    p.add_argument("--results", action="append", required=True, help="NAME=FOLDER holding test_results.json")
    p.add_argument("--curves", action="append", help="STAGE=FOLDER holding a Lightning metrics.csv")
    p.add_argument("--meta", default="data/synthetic/meta.json", help="synthetic meta.json (blind text prior)")
    p.add_argument("--checkpoint", help="exported model folder, for the clip examples")
    p.add_argument("--data", default="data/synthetic/test/mc.csv", help="multiple-choice CSV for the examples")
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--out", default="artifacts/report")
    args = p.parse_args(argv)
    model = None
    if args.checkpoint:
        from vrp.evaluation.inference import AskError, load_model

        try:
            model = load_model(args.checkpoint).eval()
        except AskError as e:
            raise SystemExit(f"error: {e}") from None
    try:
        path = build_report(
            args.out,
            _pairs(args.results, "--results"),
            _pairs(args.curves, "--curves"),
            meta=args.meta,
            model=model,
            mc_csv=args.data,
            clips=args.clips,
        )
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"report written to {path}")


if __name__ == "__main__":
    main()
