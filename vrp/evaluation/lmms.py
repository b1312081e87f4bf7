"""lmms-eval adapter: a vrp model (a folder written by `vrp export`) as an lmms-eval ``lmms`` model.

    python -m lmms_eval --model vrp --model_args checkpoint=artifacts/embedded/finetune,num_frames=8 \\
        --tasks nextqa_mc_test --batch_size 1 --device cuda:0 --output_path runs/lmms

lmms-eval finds the class through vrp's entry point (group ``lmms_eval.models``, see pyproject.toml), so nothing
has to be imported first. This module needs the optional ``lmms`` extra (lmms-eval), which pins ``av<16``:
install it in its own venv (``make lmms-env``), see docs/evaluation.md.

Requests are answered as `vrp test` answers them, through the same code:
- ``loglikelihood`` (lmms-eval's ``multiple_choice`` tasks): each continuation is scored as the assistant's answer
  after the request's context, with the chat template and end-of-turn tokens as in training
  (`LikelihoodScorer.pair_logprobs`), the video encoded once per question. As lmms-eval's own models do, the first
  element returned is the mean negative log-likelihood per scored token (lmms-eval picks the option with the lowest
  one), i.e. `LikelihoodScorer`'s default length-normalised score with its sign flipped: a task's ``acc`` equals
  `vrp test`'s accuracy on the same questions.
- ``generate_until``: greedy generation (`GenerateScorer.generate`), cut at the first ``until`` string.
Each request's visuals are one video path (read like training clips: ``num_frames`` uniformly sampled frames), one
PIL image (a clip of ``image_frames`` real frames), or several frames (PIL images or image paths) sampled to a clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image

from data_modules.collate import Collator
from data_modules.datasets import BadSample
from data_modules.sources.record import Record, strip_placeholder
from data_modules.video import frames_clip, image_clip
from vrp.evaluation.inference import DEFAULT_CHECKPOINT, clip_loader
from vrp.models.io import load_exported
from vrp.scoring.scorers import GenerateScorer, LikelihoodScorer


def manifest():
    """The entry point lmms-eval loads: model id ``vrp`` -> :class:`VRP`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vrp", simple_class_path="vrp.evaluation.lmms.VRP")


class VRP(lmms):
    """``--model_args checkpoint=DIR`` (a `vrp export` folder), ``num_frames``, ``image_frames``,
    ``score_end_of_turn``, ``use_chat_template``, ``system_prompt`` (as the datamodule's collator and the stage-2
    scorer were set), ``max_new_tokens`` (when a task gives none); lmms-eval's ``--batch_size`` batches generation
    requests and ``--device`` places the model (default: cuda when available)."""

    is_simple = True

    def __init__(
        self,
        checkpoint: str = DEFAULT_CHECKPOINT,
        num_frames: int = 8,
        image_frames: int = 1,
        score_end_of_turn: bool = True,
        use_chat_template: bool = True,
        system_prompt: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_exported(checkpoint).to(self.device)
        self.loader = clip_loader(self.model, num_frames=int(num_frames), image_frames=int(image_frames))
        self.collator = Collator(
            self.model.llm.tokenizer, use_chat_template=use_chat_template, system_prompt=system_prompt
        )
        self.likelihood = LikelihoodScorer(
            score_end_of_turn=score_end_of_turn, use_chat_template=use_chat_template, system_prompt=system_prompt
        )
        self.max_new_tokens = int(max_new_tokens)  # when a task's generation_kwargs name none
        self.generator = GenerateScorer(
            max_new_tokens=self.max_new_tokens, use_chat_template=use_chat_template, system_prompt=system_prompt
        )
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"vrp: --batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size, self.max_batch_size = int(batch_size), max_batch_size

    # ---- inputs ------------------------------------------------------------------------------------------------
    def visual_sample(self, visuals: Sequence, context: str, where: str) -> dict:
        """The sample dict of one request: one video path, one PIL image (a clip of ``image_frames`` real frames),
        or several frames (PIL images or image paths, as MVBench's frame subsets give them) sampled to a clip."""
        prompt = strip_placeholder(context.replace("<image>", ""))
        if not visuals:
            raise ValueError(f"{where}: the task gave no video or image for this request")
        if len(visuals) == 1 and isinstance(visuals[0], str):
            rec = Record(key=where, video=visuals[0], turns=[(prompt, "")], qformer_text=prompt)
            try:
                return self.loader(rec)
            except BadSample as e:
                raise ValueError(f"{where}: {e.detail}") from e
        rec = Record(key=where, video="", turns=[(prompt, "")], qformer_text=prompt, modality="image")
        if len(visuals) == 1 and isinstance(visuals[0], Image.Image):
            return self.loader.sample(
                rec, image_clip(visuals[0], self.loader.num_frames, real_frames=self.loader.image_frames)
            )
        return self.loader.sample(rec, frames_clip([open_frame(v, where) for v in visuals], self.loader.num_frames))

    def batch(self, samples: list[dict]) -> dict:
        batch = self.collator(samples)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        """The visuals lmms-eval's ``doc_to_visual`` gives for a document (lmms-eval keeps documents in
        ``task_dict``)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if callable(doc_to_visual) else doc_to_visual
        return [v for v in (visuals or []) if v is not None]

    # ---- lmms API ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(mean NLL per scored token, greedy) per request; the options of a question share one video encoding."""
        out: dict[int, tuple[float, bool]] = {}
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            context, _, _, doc_id, task, split = r.args
            groups.setdefault((task, split, doc_id, context), []).append(i)
        for (task, split, doc_id, context), members in groups.items():
            first = requests[members[0]]
            where = f"{task}/{split}/{doc_id}"
            sample = self.visual_sample(self.visuals(first.args[2], task, split, doc_id), context, where)
            batch = self.batch([sample])
            video_tokens = self.model.video_tokens(batch).repeat_interleave(len(members), dim=0)  # (O, Q, D)
            targets = [continuation(requests[i], self.task_dict) for i in members]
            total, n, greedy = self.likelihood.pair_logprobs(
                self.model, video_tokens, batch["prompt"] * len(members), targets
            )
            for j, i in enumerate(members):
                out[i] = (float(-total[j] / n[j].clamp_min(1)), bool(greedy[j]))
        # lmms-eval 0.7.3's evaluator passes every result through `unwrap_generation_output`, which turns a plain
        # (float, bool) tuple into its string; wrapped as a GenerationResult the tuple reaches the task unchanged.
        return [GenerationResult(text=out[i]) for i in range(len(requests))]

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for s in range(0, len(requests), self.batch_size):
            chunk = requests[s : s + self.batch_size]
            samples, limits = [], []
            for r in chunk:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = r.args
                samples.append(
                    self.visual_sample(
                        self.visuals(doc_to_visual, task, split, doc_id), context, f"{task}/{split}/{doc_id}"
                    )
                )
                limits.append(dict(gen_kwargs or {}))
            self.generator.max_new_tokens = int(max(g.get("max_new_tokens", self.max_new_tokens) for g in limits))
            for text, gen in zip(self.generator.generate(self.model, self.batch(samples)), limits):
                answers.append(cut_at(text, gen.get("until")))
        return answers

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vrp answers one round per request: multi-round lmms-eval tasks are not supported")


def open_frame(visual, where: str) -> Image.Image:
    """A frame of a multi-frame request: a PIL image, or the path of an image file."""
    if isinstance(visual, Image.Image):
        return visual
    if not isinstance(visual, str):
        raise ValueError(f"{where}: a frame must be a PIL image or an image path, got {type(visual).__name__}")
    try:
        with Image.open(visual) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{where}: cannot read frame {visual}: {e}") from e


def continuation(request: Instance, task_dict: dict) -> str:
    """The text a loglikelihood request scores, without the task's leading delimiter (the answer is the whole
    assistant message, as in training)."""
    _, target, _, doc_id, task, split = request.args
    text = target if isinstance(target, str) else target(task_dict[task][split][doc_id])
    return str(text).strip()


def cut_at(text: str, until: str | Sequence[str] | None) -> str:
    """``text`` up to the first of the ``until`` strings."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = min([text.find(s) for s in stops if s and s in text], default=len(text))
    return text[:cut]
