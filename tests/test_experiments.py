"""Every YAML in experiments/ parses and validates against the real classes (nothing is instantiated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vrp.tools.lightning_cli import VRPCLI

EXP = Path(__file__).resolve().parents[1] / "experiments"
STAGES = [EXP / "embedded" / "finetune.yaml", EXP / "embedded" / "pretrain.yaml"] + sorted(EXP.glob("scale/*.yaml"))
SHARED = EXP / "embedded" / "shared.yaml"  # included by both embedded stages (`config: shared.yaml`)


class _ParseOnly(VRPCLI):
    def instantiate_classes(self) -> None:  # validate the config, build nothing
        pass


def _parse(*configs: Path):
    args = [a for c in configs for a in ("--config", str(c))]
    return _ParseOnly(args=args, run=False).config


def _stage1_ablations() -> list[Path]:
    """The ablation overlays lab.ablate pretrains with stage 1's config: those leaving stage 2's init alone."""
    return [o for o in sorted(EXP.glob("ablations/*.yaml")) if "init_from" not in o.read_text()]


def _overlays() -> list[tuple[Path, Path]]:
    pairs = []
    for overlay in sorted(EXP.glob("backbones/*.yaml")) + sorted(EXP.glob("strategies/*.yaml")):
        pairs += [(EXP / "scale" / "pretrain.yaml", overlay), (EXP / "scale" / "finetune.yaml", overlay)]
    pairs += [(EXP / "embedded" / "finetune.yaml", o) for o in sorted(EXP.glob("ablations/*.yaml"))]
    pairs += [(EXP / "embedded" / "finetune.yaml", o) for o in sorted(EXP.glob("baselines/*.yaml"))]
    pairs += [(EXP / "embedded" / "finetune.yaml", o) for o in sorted(EXP.glob("zeroshot/*.yaml"))]
    pairs += [
        (EXP / "scale" / f"{stage}.yaml", o)
        for stage in ("pretrain", "finetune")
        for o in sorted(EXP.glob(f"datasets/{stage}/*.yaml"))
    ]
    # lab.ablate pretrains each overlay that leaves stage 2's init alone with stage 1's config
    pairs += [(EXP / "embedded" / "pretrain.yaml", o) for o in _stage1_ablations()]
    return pairs


def _model_parts(cfg) -> dict:
    parts = cfg.model.init_args.model.init_args
    return {k: parts[k] for k in ("vision", "fusion", "llm")}


@pytest.mark.parametrize(
    "overlay",
    [None, *_stage1_ablations()],
    ids=lambda o: "default" if o is None else o.stem,
)
def test_stage1_builds_the_model_stage2_loads(overlay):
    """Stage 2 starts from stage 1's checkpoint (`make finetune`, every stage-1 row of `make ablate`), so both
    stages must build the same vision, fusion and LLM (a LoRA rank differing between them failed a row)."""
    extra = [overlay] if overlay else []
    pre, fine = _parse(EXP / "embedded" / "pretrain.yaml", *extra), _parse(EXP / "embedded" / "finetune.yaml", *extra)
    assert _model_parts(pre) == _model_parts(fine)


def _leaves(tree, prefix: tuple = ()) -> dict[tuple, object]:
    """Every leaf of a nested mapping by its key path (a list is one leaf)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {path: v for k, sub in tree.items() for path, v in _leaves(sub, (*prefix, k)).items()}


def test_the_embedded_stages_resolve_the_shared_block():
    """Both stages resolve every key of shared.yaml to its value there (the reasoner, the data, the run settings),
    and differ in the reasoner only by llm_mode."""
    import yaml

    shared = _leaves(yaml.safe_load(SHARED.read_text()))
    assert ("model", "init_args", "model", "init_args", "fusion", "class_path") in shared
    resolved = {p.stem: _parse(p).as_dict() for p in STAGES[:2]}
    for cfg in resolved.values():
        for path, value in shared.items():
            got = cfg
            for k in path:
                got = got[k]
            assert got == value, (path, got, value)
    pre, fine = (resolved[s]["model"]["init_args"]["model"] for s in ("pretrain", "finetune"))
    assert (pre["init_args"].pop("llm_mode"), fine["init_args"].pop("llm_mode")) == ("frozen", "full")
    assert pre == fine


@pytest.mark.parametrize("stage", STAGES[:2], ids=lambda p: p.name)
def test_a_stage_file_never_sets_a_shared_key_to_another_value(stage):
    """The include comes last in a stage file and replaces what the stage set: a key in both must agree, else the
    stage's value would be silently lost."""
    import yaml

    raw = yaml.safe_load(stage.read_text())
    assert raw.pop("config") == SHARED.name
    shared = _leaves(yaml.safe_load(SHARED.read_text()))
    clashes = {p: v for p, v in _leaves(raw).items() if p in shared and shared[p] != v}
    assert clashes == {}


def test_every_yaml_is_covered():
    covered = set(STAGES) | {SHARED} | {o for _, o in _overlays()}
    assert covered == set(EXP.rglob("*.yaml")), sorted(set(EXP.rglob("*.yaml")) - covered)


@pytest.mark.parametrize("stage", STAGES[:2], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_embedded_stage_configs_parse(stage):
    cfg = _parse(stage)
    assert cfg.seed_everything == 0
    assert cfg.model.class_path.startswith("vrp.training.")


def test_scale_configs_parse_with_backbone_overlays():
    for stage in STAGES[2:]:
        # a scale config names no vision/llm itself: a backbone overlay completes it
        _parse(stage, EXP / "backbones" / "siglip_qwen.yaml")


@pytest.mark.parametrize(
    "pair", _overlays(), ids=lambda p: f"{p[0].parent.name}/{p[0].stem}+{p[1].parent.name}/{p[1].stem}"
)
def test_overlay_parses(pair):
    stage, overlay = pair
    extra = (
        [EXP / "backbones" / "siglip_qwen.yaml"]
        if stage.parent.name == "scale" and "backbones" not in str(overlay)
        else []
    )
    cfg = _parse(stage, *extra, overlay)
    connectors = {"fusion_mlp.yaml": "vrp.models.MLPConnector", "fusion_linear.yaml": "vrp.models.LinearConnector"}
    if overlay.name in connectors:
        fusion = cfg.model.init_args.model.init_args.fusion
        assert fusion.class_path == connectors[overlay.name]
        assert "qformer" not in (fusion.init_args or {}), "Q-Former init_args leaked into the connector"
        assert "max_objects" not in (fusion.init_args or {}), "track fusion init_args leaked into the connector"
        assert (fusion.init_args.pool.temporal_bins, tuple(fusion.init_args.pool.spatial_size)) == (4, (2, 2))


def test_zero_shot_overlay_builds_its_sources():
    """A `class_path` source inside a YAML must arrive as a source object, not a dict."""
    import lightning as L
    from jsonargparse import ArgumentParser, Namespace

    from data_modules.sources import LlavaInstructions
    from vrp.evaluation.holdout import HoldOutTypes

    cfg = _parse(EXP / "embedded" / "finetune.yaml", EXP / "zeroshot" / "holdout_predictive.yaml")
    parser = ArgumentParser()
    parser.add_argument("--data", type=L.LightningDataModule)
    train = parser.instantiate_classes(Namespace(data=cfg.data)).data.train_source
    assert isinstance(train, HoldOutTypes) and train.held_out == ["counterfactual", "predictive"]
    assert isinstance(train.source, LlavaInstructions)
    assert train.source.boxes, "the default model reads object boxes: the held-out source needs them"


def _instantiate_data(*configs: Path):
    import lightning as L
    from jsonargparse import ArgumentParser, Namespace

    parser = ArgumentParser()
    parser.add_argument("--data", type=L.LightningDataModule)
    return parser.instantiate_classes(Namespace(data=_parse(*configs).data)).data


def test_scale_nextqa_points_at_the_released_layout():
    dm = _instantiate_data(EXP / "scale" / "finetune.yaml", EXP / "backbones" / "siglip_qwen.yaml")
    test = dm.test_source
    path = test.video_path.format(video="0020/4882821564")
    assert str(Path(test.video_root) / path) == "/data/nextqa/NExTVideo/0020/4882821564.mp4"
    assert test.video_map == "/data/nextqa/map_vid_vidorID.json"
    assert _parse(EXP / "scale" / "finetune.yaml", EXP / "backbones" / "siglip_qwen.yaml").results.type_groups[
        "causal"
    ] == ["CW", "CH"]


def test_nextqa_zero_shot_overlay_holds_out_the_causal_family():
    dm = _instantiate_data(
        EXP / "scale" / "finetune.yaml",
        EXP / "backbones" / "siglip_qwen.yaml",
        EXP / "datasets" / "finetune" / "nextqa_holdout_causal.yaml",
    )
    assert dm.train_source.held_out == ["CH", "CW"]


@pytest.mark.parametrize("stage", STAGES[:2], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_embedded_checkpoints_are_replaced_not_versioned(stage):
    """`make finetune` tests and exports `last.ckpt`: a re-run must overwrite it, not write `last-v1.ckpt` beside it."""
    import yaml

    callbacks = yaml.safe_load(stage.read_text())["trainer"]["callbacks"]
    ckpts = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpts and all(c["init_args"].get("enable_version_counter") is False for c in ckpts)
