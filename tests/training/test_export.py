"""Export (LoRA separate or merged) reloads to a model with the same outputs as the trained one."""

from __future__ import annotations

import torch
import yaml
from tiny_assets import ToyData, reasoner, toy_config

from vrp.models.io import build_model, load_exported
from vrp.training.export import export


def _config(root, run) -> dict:
    """The reasoner of the toy stage-2 config (`toy_config`) with LoRA (rank 4) on the LLM."""
    lora = reasoner({"llm": {"init_args": {"lora_rank": 4}}, "llm_mode": "lora"})
    return yaml.safe_load(toy_config(root, run, lora).read_text())["model"]["init_args"]["model"]


def test_export_roundtrip_separate_and_merged(tiny_root, tmp_path):
    config = _config(tiny_root, tmp_path / "run")
    model = build_model(config)
    with torch.no_grad():  # pretend training moved every trainable weight (LoRA B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    state = {f"model.{k}": v for k, v in model.state_dict_trainable().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": config}}, tmp_path / "last.ckpt")
    batch = next(iter(ToyData(str(tiny_root / "tokenizer"), num_samples=4).train_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = model(batch).logits
    for merge in (False, True):
        out = export(tmp_path / "last.ckpt", tmp_path / f"export_{merge}", merge_lora=merge)
        assert (out / "llm").is_dir() == merge
        with torch.no_grad():
            got = load_exported(out)(batch).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_ask_warns_about_a_stage1_export(tiny_root, tmp_path, capsys):
    import numpy as np

    from data_modules.video import write_video
    from vrp.tools import ask

    write_video(tmp_path / "clip.mp4", np.full((4, 32, 32, 3), 90, np.uint8), fps=4)
    config = _config(tiny_root, tmp_path / "run")
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict_trainable().items()}
    for stage, module in ((1, "vrp.training.AlignmentPretraining"), (2, "vrp.training.InstructionTuning")):
        torch.save(
            {
                "state_dict": state,
                "global_step": 7,
                "hyper_parameters": {"_class_path": module, "model": config},
            },
            tmp_path / f"stage{stage}.ckpt",
        )
        out = export(tmp_path / f"stage{stage}.ckpt", tmp_path / f"export{stage}")
        ask.main(
            [
                str(tmp_path / "clip.mp4"),
                "what colour is it ?",
                "--options",
                "red|green",
                "--num-frames",
                "2",
                "--checkpoint",
                str(out),
            ]
        )
        err = capsys.readouterr().err
        assert ("exported from a stage-1 (video-text alignment) checkpoint" in err) == (stage == 1), err


def test_ask_prints_its_answer_without_loading_noise(tiny_root, tmp_path, capfd):
    """`vrp ask` on an exported model (tiny ViT saved without the pooler it never uses): the answer on stdout, the
    option scores on stderr, and no Hugging Face load report or weight-loading bar."""
    import numpy as np

    from data_modules.video import write_video
    from vrp.tools import ask

    write_video(tmp_path / "clip.mp4", np.full((4, 32, 32, 3), 90, np.uint8), fps=4)
    config = _config(tiny_root, tmp_path / "run")
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict_trainable().items()}
    hparams = {"_class_path": "vrp.training.InstructionTuning", "model": config}
    torch.save({"state_dict": state, "global_step": 7, "hyper_parameters": hparams}, tmp_path / "last.ckpt")
    out = export(tmp_path / "last.ckpt", tmp_path / "export")
    capfd.readouterr()
    clip, question = str(tmp_path / "clip.mp4"), "what colour is it ?"
    ask.main([clip, question, "--options", "red|green", "--num-frames", "2", "--checkpoint", str(out)])
    stdout, stderr = capfd.readouterr()
    assert stdout.strip() in ("red", "green")
    assert len(stderr.strip().splitlines()) == 2, stderr  # one score line per option, nothing else
