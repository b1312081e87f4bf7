"""A Hugging Face causal LM with its tokenizer: frozen, LoRA (peft) or fully trained; fed through ``inputs_embeds``.

The video placeholder token ``<video>`` is added to the tokenizer when missing (resizing the embeddings); the reasoner
replaces it by projected visual tokens, so its own embedding is never used.
"""

from __future__ import annotations

import torch
from torch import nn

from vrp.models.constants import VIDEO_TOKEN
from vrp.models.hf_loading import quiet_from_pretrained, report_missing
from vrp.models.paths import model_source, pretrained_source
from vrp.models.vision import resolve_dtype


class SequenceTooLong(ValueError):
    """An input longer than the LLM's position table."""


class CausalLM(nn.Module):
    """Any HF causal LM by name/path, or a randomly initialised one from ``config`` (a dict with ``model_type``).

    A released video-LLM folder (`vrp.models.families`) gives its language model and tokenizer.
    ``tokenizer`` defaults to ``model_name_or_path``; with ``config`` it is required, and the config's ``vocab_size``
    and special token ids default to the tokenizer's. Trainable mode is set by the owner: ``freeze()``,
    ``enable_lora()`` or ``unfreeze()``. ``attn_implementation``: the HF attention kernel ("sdpa", "eager",
    "flash_attention_2", ...; None: the library's default); packed batches (`forward_packed`) go to a flash kernel
    as one padding-free row (its varlen path), to any other as rows with a block-diagonal causal mask.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        config: dict | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from vrp.models import families

        model_name_or_path = model_source(model_name_or_path, config, "LLM")
        tok_path = tokenizer or model_name_or_path
        if tok_path is None:
            raise ValueError("an LLM built from `config` needs `tokenizer` (a tokenizer folder or hub name)")
        tok_path = pretrained_source(tok_path, "LLM tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust_remote_code)
        if VIDEO_TOKEN not in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = resolve_dtype(dtype)
        attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.attn_implementation = attn_implementation
        if config is not None:
            tok = self.tokenizer
            defaults = {
                "vocab_size": len(tok),
                "pad_token_id": tok.pad_token_id,
                "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id,
            }
            cfg = AutoConfig.for_model(**{**defaults, **config})
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, **attn).to(torch_dtype)
        elif families.family_type(model_name_or_path):  # a released video-LLM: its language model
            model = families.language_model(model_name_or_path).to(torch_dtype)
        else:
            model, missing = quiet_from_pretrained(
                AutoModelForCausalLM.from_pretrained,
                model_name_or_path,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                **attn,
            )
            report_missing(model, missing, f"LLM {model_name_or_path}")
        if len(self.tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(self.tokenizer))
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.video_token_id: int = self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.hidden_size: int = model.config.get_text_config().hidden_size
        self.max_positions: int | None = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        self.lora_rank, self.lora_alpha, self.lora_dropout = lora_rank, lora_alpha, lora_dropout
        self.lora_target_modules = lora_target_modules

    def freeze(self) -> None:
        self.model.requires_grad_(False)

    def unfreeze(self) -> None:
        self.model.requires_grad_(True)

    def enable_lora(self) -> None:
        """Wrap the model with peft LoRA adapters; only the adapters are trainable afterwards."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.model, "peft_config"):
            raise RuntimeError("LoRA is already enabled on this LLM")
        lora = LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(self.model, lora)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)  # (B, L, D)

    def check_length(self, attention_mask: torch.Tensor, new_tokens: int = 0) -> None:
        """`SequenceTooLong` when the longest row's real tokens (+ `new_tokens` to generate) need more positions than
        the model has (``max_position_embeddings``): past its table a model silently degrades or fails."""
        if self.max_positions is None or attention_mask.shape[-1] + new_tokens <= self.max_positions:
            return  # even fully used, the padded length fits (no device sync needed)
        length = int(attention_mask.sum(-1).max())
        if length + new_tokens > self.max_positions:
            extra = f" + {new_tokens} new tokens" if new_tokens else ""
            raise SequenceTooLong(
                f"the input is {length} tokens (text and video tokens){extra}, more than the LLM's "
                f"max_position_embeddings={self.max_positions}; shorten it"
            )

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        self.check_length(attention_mask)
        # Positions count real tokens only, so left- and right-padded rows see the same positions.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, labels=labels
        )

    def forward_packed(
        self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor | None = None
    ):
        """Packed rows (`vrp.models.reasoner.pack_sequences`): inputs_embeds (R, W, D), position_ids (R, W)
        restarting at 0 where each sample (and each row's padding) starts, labels (R, W) with -100 on every
        sample's first token. No 2-D mask is passed, so the HF model reads the sample boundaries from the position
        ids: SDPA / eager build a block-diagonal causal mask, a flash kernel its varlen path (the rows flattened
        into one, which flash needs)."""
        if "flash" in (self.attn_implementation or ""):
            R, W, D = inputs_embeds.shape
            inputs_embeds, position_ids = inputs_embeds.reshape(1, R * W, D), position_ids.reshape(1, R * W)
            labels = None if labels is None else labels.reshape(1, R * W)
        # use_cache=False: with a cache, HF does not read sample boundaries from the position ids
        return self.model(inputs_embeds=inputs_embeds, position_ids=position_ids, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **gen
    ) -> torch.Tensor:
        """Left-padded prompt embeddings -> new token ids (B, <= max_new_tokens), prompt not included."""
        self.check_length(attention_mask, max_new_tokens)
        gen.setdefault("do_sample", False)
        gen.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **gen
        )
