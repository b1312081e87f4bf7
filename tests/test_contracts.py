"""Every implementation of a declared contract (`vrp.models.contracts`, `data_modules.sources.MapSource`) conforms:
isinstance with its protocol, and the declared shapes hold on a tiny input. The lists below are checked against the
classes the packages define, so a new part cannot skip its row."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
from functools import partial

import pytest
import tiny_assets
import torch
from torch import nn

import data_modules.sources
import vrp.models
from data_modules.skips import SkipCounter
from data_modules.sources import (
    CaptionManifest,
    LlavaInstructions,
    MapSource,
    Mixture,
    MultipleChoice,
    Record,
    VideoChat2Instructions,
)
from vrp.evaluation.baselines import BlindFusion, MiddleFrame
from vrp.evaluation.holdout import HoldOutTypes
from vrp.models.connectors import LinearConnector, MLPConnector, PerceiverResampler, PoolingConnector, PoolOptions
from vrp.models.contracts import (
    Fusion,
    FusionInput,
    Text,
    TextFusion,
    TokenLayout,
    TrackReader,
    Tracks,
    VisionEncoder,
    box_substeps,
)
from vrp.models.families.instructblip_video import InstructBlipVideoFusion
from vrp.models.families.llava import LlavaVideoConnector
from vrp.models.qformer_fusion import FrameQFormerFusion, JointQFormerFusion
from vrp.models.tracks import TrackFusion
from vrp.models.vision import HFVisionEncoder, OpenClipVisionEncoder

D, GRID, PREFIX, T, K = 16, (2, 2), 1, 3, 2
N = PREFIX + GRID[0] * GRID[1]
TINY_QFORMER = dataclasses.replace(tiny_assets.TINY_QFORMER, num_query_tokens=3, num_frames=T, init_std=0.1)
TINY_VIDEO_QFORMER = dict(video_num_query_tokens=2, video_num_layers=1)
TINY_TRACKS = dict(
    max_objects=K, num_frames=T, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, num_attributes=4
)
TINY_TEXT = dict(model_type="llama", hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
TINY_INSTRUCTBLIP_VIDEO = dict(
    model_type="instructblipvideo",
    vision_config=dict(hidden_size=D, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    qformer_config=dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=20,
        encoder_hidden_size=D,
    ),
    text_config=TINY_TEXT,
    num_query_tokens=2,
)
TINY_LLAVA_NEXT_VIDEO = dict(
    model_type="llava_next_video",
    vision_config=dict(
        model_type="clip_vision_model", hidden_size=D, num_attention_heads=2, image_size=16, patch_size=8
    ),
    text_config=TINY_TEXT,
)
FUSIONS = {
    "PoolingConnector": partial(PoolingConnector, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 1))),
    "LinearConnector": partial(LinearConnector, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 1)), output_dim=8),
    "MLPConnector": partial(
        MLPConnector, pool=PoolOptions(temporal_bins=2, spatial_size=(1, 2)), hidden_dim=8, output_dim=8
    ),
    "PerceiverResampler": partial(PerceiverResampler, num_latents=3, depth=1, num_heads=2, output_dim=8),
    "FrameQFormerFusion": partial(FrameQFormerFusion, qformer=TINY_QFORMER, **TINY_VIDEO_QFORMER),
    "JointQFormerFusion-text-objects": partial(
        JointQFormerFusion, qformer=dataclasses.replace(TINY_QFORMER, vocab_size=20, objects=True)
    ),
    "TrackFusion-roi": partial(TrackFusion, **TINY_TRACKS),
    "TrackFusion-oracle": partial(TrackFusion, appearance="oracle", **TINY_TRACKS),
    "TrackFusion-none": partial(TrackFusion, appearance="none", **TINY_TRACKS),
    "InstructBlipVideoFusion": partial(InstructBlipVideoFusion, config=TINY_INSTRUCTBLIP_VIDEO, num_frames=T),
    "LlavaVideoConnector": partial(LlavaVideoConnector, config=TINY_LLAVA_NEXT_VIDEO, num_frames=T),
    "BlindFusion": partial(BlindFusion, num_output_tokens=2, output_dim=8),
    "MiddleFrame-MLP": partial(
        MiddleFrame, fusion=partial(MLPConnector, pool=PoolOptions(temporal_bins=1, spatial_size=(1, 1)))
    ),
    "MiddleFrame-QFormer": partial(
        MiddleFrame,
        fusion=partial(
            FrameQFormerFusion, qformer=dataclasses.replace(TINY_QFORMER, vocab_size=20), **TINY_VIDEO_QFORMER
        ),
    ),
}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1},
}
ENCODERS = {
    "HFVisionEncoder": lambda: HFVisionEncoder(config={**tiny_assets.TINY_VIT, "image_size": 16, "hidden_size": 16}),
    "OpenClipVisionEncoder": lambda: OpenClipVisionEncoder("vrp-contracts-tiny-clip", model_config=TINY_CLIP),
}


def _classes(package, keep) -> set[type]:
    """The classes defined in ``package``'s modules (and vrp.evaluation.baselines / .holdout) that ``keep`` selects."""
    modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    modules += [importlib.import_module("vrp.evaluation.baselines"), importlib.import_module("vrp.evaluation.holdout")]
    return {
        c
        for m in modules
        for _, c in inspect.getmembers(m, inspect.isclass)
        if c.__module__ == m.__name__ and not c.__name__.startswith("_") and keep(c)
    }


def _is_fusion_class(cls: type) -> bool:
    """Built like a fusion: the reasoner's factory argument, the encoder's `TokenLayout`, first."""
    if not issubclass(cls, nn.Module):
        return False
    return list(inspect.signature(cls.__init__).parameters)[1:2] == ["layout"]


def test_every_fusion_and_encoder_class_has_a_row():
    listed = {f.func for f in FUSIONS.values()}
    # parts of fusions, and the abstract base of the family connectors
    components = {vrp.models.objects.ObjectTokens, vrp.models.connectors.TokenPool, vrp.models.families.FamilyConnector}
    found = _classes(vrp.models, _is_fusion_class) - components
    assert found == listed, f"classes without a contract row: {sorted(c.__name__ for c in found - listed)}"
    encoders = _classes(vrp.models, lambda c: issubclass(c, nn.Module) and c.__module__ == "vrp.models.vision")
    assert {c.__name__ for c in encoders} == set(ENCODERS)


@pytest.mark.parametrize(
    "fusion, config, frames",
    [(InstructBlipVideoFusion, TINY_INSTRUCTBLIP_VIDEO, 4), (LlavaVideoConnector, TINY_LLAVA_NEXT_VIDEO, 8)],
)
def test_family_connector_frames_default_to_the_family_and_are_checked(fusion, config, frames):
    """``num_frames`` left out is the family's own (4: InstructBLIP-Video's processor, 8: LLaVA's), and fixes the
    token count; other clip lengths are refused."""
    layout = TokenLayout(D, GRID, PREFIX)
    default, given = fusion(layout, config=config), fusion(layout, config=config, num_frames=T)
    assert default.num_frames == frames and given.num_frames == T
    assert default.num_output_tokens * T == given.num_output_tokens * frames
    assert default(FusionInput(torch.randn(2, frames, N, D))).shape[1] == default.num_output_tokens
    with pytest.raises(ValueError, match=f"built for num_frames={frames}"):
        default(FusionInput(torch.randn(2, T, N, D)))


def _inputs(B: int = 2) -> FusionInput:
    """Visual tokens with a padding frame, tracks (one box row per frame, attributes for the state oracle), text."""
    frame_mask = torch.ones(B, T, dtype=torch.bool)
    frame_mask[1, -1] = False
    attributes = torch.zeros(B, K, 4)
    attributes[:, :, 0] = 1
    tracks = Tracks(
        torch.tensor([0.1, 0.1, 0.6, 0.6]).expand(B, T, K, 4).clone(), torch.ones(B, T, K, dtype=torch.bool), attributes
    )
    text = Text(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    return FusionInput(torch.randn(B, T, N, D), frame_mask, tracks, text)


@pytest.mark.parametrize("name", FUSIONS)
def test_fusion_contract(name):
    """Each fusion gets what it declares it reads (tracks only as a TrackReader, text only with supports_text) and
    refuses anything else; a TrackReader that requires tracks refuses to run without them."""
    torch.manual_seed(0)
    fusion = FUSIONS[name](TokenLayout(D, GRID, PREFIX))
    assert isinstance(fusion, Fusion) and isinstance(fusion.supports_text, bool)
    full = _inputs()
    reads_tracks = isinstance(fusion, TrackReader)
    assert reads_tracks == any(k in name for k in ("Track", "objects"))  # declared by those that read tracks only
    inputs = FusionInput(
        full.visual, full.frame_mask, full.tracks if reads_tracks else None, full.text if fusion.supports_text else None
    )
    out = fusion(inputs)
    assert out.shape == (2, fusion.num_output_tokens, fusion.output_dim) and torch.isfinite(out).all()
    assert box_substeps(fusion) == (fusion.box_substeps if reads_tracks else 1)
    untracked = dataclasses.replace(inputs, tracks=None)
    if reads_tracks and fusion.requires_tracks:
        with pytest.raises(ValueError, match="no tracks"):
            fusion(untracked)
    else:  # tracks are optional or not read: the same shape without them
        assert fusion(untracked).shape == out.shape
    if not reads_tracks:
        with pytest.raises(ValueError, match="reads no object tracks"):
            fusion(dataclasses.replace(inputs, tracks=full.tracks))
    if not fusion.supports_text:
        with pytest.raises(ValueError, match="does not read text"):
            fusion(dataclasses.replace(inputs, text=full.text))
    if "QFormerFusion" in name and not name.startswith("MiddleFrame"):
        assert isinstance(fusion, TextFusion)  # a text encoder for stage 1, whether or not the queries read text
    if isinstance(fusion, TextFusion) and fusion.supports_text:
        assert fusion.encode_text(full.text).shape == (2, 3, fusion.hidden_size)
        joint = fusion.forward_with_text(inputs)
        assert joint.shape[0] == 2 and joint.shape[2] == fusion.hidden_size


@pytest.mark.parametrize("name", ENCODERS)
def test_vision_encoder_contract(name):
    torch.manual_seed(0)
    enc = ENCODERS[name]()
    assert isinstance(enc, VisionEncoder)
    assert len(enc.mean) == len(enc.std) == 3 and len(enc.grid) == 2
    video = torch.randn(2, 2, 3, enc.image_size, enc.image_size)
    tokens = enc(video)
    assert tokens.shape == (2, 2, enc.num_prefix_tokens + enc.grid[0] * enc.grid[1], enc.width)


def _source_files(tmp_path):
    (tmp_path / "captions.csv").write_text("video,caption\na.mp4,a red ball\nb.mp4,a blue cube\n")
    (tmp_path / "llava.json").write_text(
        json.dumps(
            [
                {
                    "id": f"q{i}",
                    "video": f"v{i}.mp4",
                    "type": t,
                    "conversations": [
                        {"from": "human", "value": "<video>\nwhat next?"},
                        {"from": "gpt", "value": "red"},
                    ],
                }
                for i, t in enumerate(["predictive", "descriptive"])
            ]
        )
    )
    (tmp_path / "vc2.jsonl").write_text(json.dumps({"video": "a.mp4", "QA": [{"i": "Watch.", "q": "Who?", "a": "x"}]}))
    (tmp_path / "mc.csv").write_text(
        "video,question,answer,a0,a1,a2,a3,a4,qid,type\nv1,why did it turn,1,red,blue,green,cube,ball,1,explanatory\n"
    )
    return {
        "CaptionManifest": lambda: CaptionManifest(str(tmp_path / "captions.csv")),
        "LlavaInstructions": lambda: LlavaInstructions(str(tmp_path / "llava.json")),
        "VideoChat2Instructions": lambda: VideoChat2Instructions(str(tmp_path / "vc2.jsonl")),
        "MultipleChoice": lambda: MultipleChoice(str(tmp_path / "mc.csv"), video_path="{video}.mp4"),
        "Mixture": lambda: Mixture(
            [
                LlavaInstructions(str(tmp_path / "llava.json")),
                MultipleChoice(str(tmp_path / "mc.csv"), video_path="{video}.mp4"),
            ]
        ),
        "HoldOutTypes": lambda: HoldOutTypes(LlavaInstructions(str(tmp_path / "llava.json")), held_out=["predictive"]),
    }


SOURCES = [
    "CaptionManifest",
    "LlavaInstructions",
    "VideoChat2Instructions",
    "MultipleChoice",
    "Mixture",
    "HoldOutTypes",
]


def test_every_map_source_class_has_a_row():
    found = _classes(
        data_modules.sources, lambda c: inspect.isfunction(getattr(c, "load", None)) and c is not MapSource
    )
    assert {c.__name__ for c in found} == set(SOURCES)


@pytest.mark.parametrize("name", SOURCES)
def test_map_source_contract(name, tmp_path):
    source = _source_files(tmp_path)[name]()
    assert isinstance(source, MapSource)
    records = source.load(SkipCounter(max_bad_fraction=1.0))
    assert records and all(isinstance(r, Record) and r.turns for r in records)


def test_reasoner_checks_its_parts_against_their_contracts():
    from vrp.models.reasoner import VideoReasoner

    with pytest.raises(TypeError, match="not a vision encoder"):
        VideoReasoner(nn.Linear(2, 2), FUSIONS["PoolingConnector"], llm=None)
    with pytest.raises(TypeError, match="not a fusion module"):
        VideoReasoner(ENCODERS["HFVisionEncoder"](), lambda layout: nn.Identity(), llm=None)
