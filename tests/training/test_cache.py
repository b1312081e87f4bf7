"""Feature cache per video: `vrp cache` writes each video once; reading it never decodes and gives the same tokens,
boxes and loss as decoding the pixels; a store built with another vision encoder is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_assets import TINY_LLM, TINY_VIT, mc_source, reasoner, run_main, stage_config, synthetic_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from lab.prepare import save_random_backbones
    from lab.synthetic import generate

    root = tmp_path_factory.mktemp("cache")
    generate(root / "data", videos=12, seed=1, workers=1, size=64, min_frames=8, max_frames=10)
    save_random_backbones(
        str(root / "data" / "tokenizer"), root / "bb", seed=0, vit={**TINY_VIT, "image_size": 64}, llm=TINY_LLM
    )
    mc = mc_source(root / "data" / "train" / "mc.csv", root / "data" / "train" / "boxes.json")
    overlay = {
        "trainer": {"logger": False, "max_steps": 1},
        "data": {"init_args": {"num_frames": 4, "batch_size": 3, "val": mc, "test": mc}},
    }
    # the shipped track fusion, one box row a frame: with more, the cached path keeps the coordinates of masked rows
    # that decoding zeroes, and the boxes are compared whole
    model = reasoner({"fusion": {"init_args": {"num_frames": 4, "box_substeps": 1}}, "objects": None})
    config = stage_config(root / "run", root / "bb", synthetic_data(root / "data", boxes=True), overlay, model)
    return root, config


def test_vrp_cache_then_reading_it_equals_decoding(setup, tmp_path):
    from data_modules.features import FeatureStore
    from vrp.models.contracts import box_substeps
    from vrp.tools.cache import main as cache_main
    from vrp.tools.lightning_cli import VRPCLI

    root, config = setup
    out = tmp_path / "features"
    not_yet = ["--data.init_args.ground_truth_boxes=false", f"--data.init_args.tracks={tmp_path / 'tracks'}"]
    # the tracks are not written yet (make runs cache before tracks): the cache reads no boxes
    cache_main(["--config", str(config), "--out", str(out), "--splits", "train,val", *not_yet])
    store = FeatureStore(out)
    import json

    asked = {
        Path(item["video"]).stem for item in json.loads((root / "data" / "train" / "instructions.json").read_text())
    }
    assert store.meta["videos"] == len(asked) and all(v in store for v in asked)  # each video once
    assert store.meta["vision"]["init_args"]["model_name_or_path"] == str(root / "bb" / "vit")

    def batch_of(feature_cache):
        args = ["--config", str(config), f"--data.init_args.feature_cache={feature_cache}"]
        cli = VRPCLI(args=args, run=False)
        dm, module = cli.datamodule, cli.model
        vision = module.model.vision
        dm.configure_preprocess(vision.image_size, tuple(vision.mean), tuple(vision.std))
        dm.configure_box_substeps(box_substeps(module.model.fusion))  # as fit hands it over
        dm.setup("fit")
        return module, next(iter(dm.val_dataloader()))

    pixels_module, pixels = batch_of("null")
    cached_module, cached = batch_of(str(out))
    assert "video" in pixels and "video" not in cached and cached["visual"].dtype == torch.float16
    torch.testing.assert_close(cached["boxes"], pixels["boxes"])
    torch.testing.assert_close(cached["box_mask"], pixels["box_mask"])
    with torch.no_grad():
        encoded = pixels_module.model.vision(pixels["video"])
        torch.testing.assert_close(cached["visual"].float(), encoded, atol=2e-3, rtol=2e-3)  # float16 storage
        cached_module.model.load_state_dict(pixels_module.model.state_dict())
        from vrp.training.losses import lm_loss

        a = lm_loss(pixels_module.model, pixels_module.encode(pixels), pixels)
        b = lm_loss(cached_module.model, cached_module.encode(cached), cached)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_store_errors(tmp_path):
    from data_modules.features import FeatureStore

    with pytest.raises(FileNotFoundError, match="vrp cache"):
        FeatureStore(tmp_path / "none")
    store = FeatureStore(tmp_path / "s", create=True)
    store.write("v1", torch.zeros(2, 3, 4), torch.ones(2, dtype=torch.bool), torch.tensor([0.0, 0.5]), 8.0)
    store.finish(vision={"class_path": "x"})
    again = FeatureStore(tmp_path / "s")
    assert "v1" in again and "v2" not in again and again.meta["videos"] == 1
    assert again.read("v1")["visual"].shape == (2, 3, 4)
    with pytest.raises(KeyError, match="not in the feature cache"):
        again.read("v2")
    with pytest.raises(ValueError, match="cannot name a file"):
        again.read("../x")


def test_an_entry_serves_only_the_file_it_was_computed_from(setup, tmp_path, capsys):
    """Another generated set whose clips share the names (`vrp test --data.init_args.root=OTHER` with the
    same feature_cache) is refused in one line, never scored on the first set's features; `vrp cache` with the same
    overrides re-encodes exactly those entries, after which the first set is the one refused."""
    from lab.synthetic import generate
    from vrp.tools.cache import main as cache_main

    root, config = setup
    out = tmp_path / "features"
    cache_main(["--config", str(config), "--out", str(out), "--splits", "train,val"])
    other = tmp_path / "other"
    generate(other, videos=12, seed=2, workers=1, size=64, min_frames=8, max_frames=10)
    other_config = tmp_path / "other.yaml"
    other_config.write_text(config.read_text().replace(str(root / "data"), str(other)))

    def test_run(cfg) -> int:
        return run_main(
            ["test", "--config", str(cfg), f"--data.init_args.feature_cache={out}"]
            + [f"--trainer.default_root_dir={tmp_path / 'runs'}", "--results.dir=null"]
        )

    assert test_run(config) == 0
    capsys.readouterr()
    assert test_run(other_config) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: feature cache {out}: entry 'train_0000") and "was computed from " in line
    assert f"{root / 'data' / 'train' / 'videos'}/train_0000" in line
    assert f"not from {other / 'train' / 'videos'}/train_0000" in line
    assert "vrp cache --config STAGE.yaml --out DIR" in line and "feature_cache: null" in line

    cache_main(["--config", str(other_config), "--out", str(out), "--splits", "train,val"])
    assert "train: cached 0 new videos" not in capsys.readouterr().out  # re-encoded for OTHER's files
    assert test_run(other_config) == 0
    assert test_run(config) == 2


def test_damaged_and_unrecorded_entries(tmp_path):
    """A truncated or empty entry is a counted skip naming the file and the fix (never SafetensorError alone); an
    entry that records no video file cannot serve a run that gives one; `vrp cache` re-encodes both."""
    from data_modules.features import FeatureCacheMismatch, FeatureStore
    from data_modules.skips import BadSample

    video = tmp_path / "v1.mp4"
    video.write_bytes(b"a video")
    store = FeatureStore(tmp_path / "s", create=True)
    args = (torch.zeros(2, 3, 4), torch.ones(2, dtype=torch.bool), torch.tensor([0.0, 0.5]), 8.0)
    store.write("v1", *args, source=video)
    assert store.read("v1", source=video)["visual"].shape == (2, 3, 4) and store.check("v1", video) is None
    video.write_bytes(b"another video")
    with pytest.raises(FeatureCacheMismatch, match="entry 'v1' was computed from .* not from"):
        store.read("v1", source=video)
    assert "was computed from" in store.check("v1", video)

    store.write("v1", *args)  # no source recorded
    with pytest.raises(FeatureCacheMismatch, match="records no video file"):
        store.read("v1", source=video)
    assert store.read("v1")["visual"].shape == (2, 3, 4)  # a reader that gives no file is not checked

    for damage in (b"", b"\x08\x00"):
        (tmp_path / "s" / "v1.safetensors").write_bytes(damage)
        with pytest.raises(BadSample) as e:
            store.read("v1", source=video)
        assert e.value.reason == "decode_error" and e.value.key == str(tmp_path / "s" / "v1.safetensors")
        assert "is damaged" in e.value.detail and f"--out {tmp_path / 's'}" in e.value.detail
        assert "is damaged" in store.check("v1", video)
