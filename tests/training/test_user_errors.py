"""User mistakes end in one line that says what is wrong, last: a bad checkpoint file (never torch's advice to load
it with `weights_only=False`), a model path that does not exist, a config key with a typo."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from tiny_assets import toy_config

from data_modules.collate import Collator
from vrp.cli import main
from vrp.models.io import CheckpointError, load_weights, read_checkpoint
from vrp.models.paths import ModelPathError, pretrained_source
from vrp.tools import export


class NotAllowed:
    pass


def bad_files(folder) -> dict[str, str]:
    """file name -> the words its error must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "random.ckpt").write_bytes(bytes(range(256)) * 16)
    torch.save({"state_dict": {"w": torch.ones(64)}}, folder / "good.ckpt")
    good = (folder / "good.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    torch.save({"state_dict": {}, "x": NotAllowed()}, folder / "object.ckpt")
    torch.save([1, 2], folder / "list.ckpt")
    (folder / "random.safetensors").write_bytes(bytes(range(256)))
    return {
        "empty.ckpt": "is empty (0 bytes)",
        "random.ckpt": "is not a PyTorch checkpoint",
        "truncated.ckpt": "is truncated or corrupted",
        "object.ckpt": "holds Python objects other than tensors",
        "list.ckpt": "holds a list, not a checkpoint dict",
        "missing.ckpt": "does not exist",
        "random.safetensors": "is not a readable safetensors file",
    }


def test_each_bad_file_gets_one_line_naming_it(tmp_path):
    for name, words in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_weights(tmp_path / name)
        message = str(e.value)
        assert str(tmp_path / name) in message and words in message, message
        assert "\n" not in message and "weights_only" not in message, message
    assert "NotAllowed" in str(pytest.raises(CheckpointError, read_checkpoint, tmp_path / "object.ckpt").value)


def test_vrp_test_and_export_print_one_error_line(tiny_root, tmp_path, capsys):
    bad_files(tmp_path / "bad")
    config = toy_config(tiny_root, tmp_path / "run")
    for name in ("random.ckpt", "empty.ckpt"):
        with pytest.raises(SystemExit) as e:
            main(["test", "--config", str(config), "--ckpt_path", str(tmp_path / "bad" / name)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: checkpoint {tmp_path / 'bad' / name} "), err[-3:]
        assert not any("weights_only" in line for line in err)
    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", str(tmp_path / "bad" / "truncated.ckpt"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: checkpoint {tmp_path / 'bad' / 'truncated.ckpt'} is truncated "
        f"or corrupted ({os.path.getsize(tmp_path / 'bad' / 'truncated.ckpt')} "
        "bytes; its zip archive cannot be read)"
    )


def last_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_missing_local_model_path_is_named(tiny_root, tmp_path, capsys):
    missing = tmp_path / "artifacts" / "llm"
    with pytest.raises(ModelPathError, match=f"LLM model_name_or_path '{missing}' does not exist"):
        pretrained_source(str(missing), "LLM model_name_or_path")
    with pytest.raises(ModelPathError):
        pretrained_source("no_such_folder/embedded/llm", "LLM")  # two slashes: a local path by form
    assert pretrained_source("Qwen/Qwen2.5-0.5B", "LLM") == "Qwen/Qwen2.5-0.5B"  # a Hub id: left to the Hub
    with pytest.raises(ModelPathError, match=f"tokenizer '{missing}' does not exist"):
        Collator(str(missing))  # the datamodule's tokenizer path, checked the same way
    config = toy_config(tiny_root, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["model"]["init_args"]["llm"]["init_args"]["model_name_or_path"] = str(missing)
    config.write_text(yaml.safe_dump(cfg))
    assert last_error_line(capsys, ["fit", "--config", str(config)]) == (
        f"error: LLM model_name_or_path '{missing}' does not exist (a local path: check it, or create it first, "
        "e.g. `make prepare` for the embedded default's artifacts/embedded)"
    )


def test_a_config_typo_is_the_last_line(tiny_root, tmp_path, capsys):
    config = toy_config(tiny_root, tmp_path / "run")
    assert last_error_line(capsys, ["fit", "--config", str(config), "--model.init_args.lerning_rate=1"]) == (
        "error: model (vrp.training.InstructionTuning): Option 'lerning_rate' is not accepted"
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["model"]["init_args"]["fusion"]["init_args"]["outptu_dim"] = 3
    config.write_text(yaml.safe_dump(cfg))
    assert last_error_line(capsys, ["fit", "--config", str(config)]) == (
        "error: model.init_args.model.init_args.fusion: Option 'outptu_dim' is not accepted"
    )
