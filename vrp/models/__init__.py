"""Model components (plain torch): vision encoders, fusion connectors, the LLM wrapper and the reasoner."""

from vrp.models.connectors import LinearConnector, MLPConnector, PerceiverResampler, PoolingConnector, PoolOptions
from vrp.models.constants import VIDEO_TOKEN
from vrp.models.families.instructblip_video import InstructBlipVideoFusion
from vrp.models.families.llava import LlavaVideoConnector
from vrp.models.llm import CausalLM
from vrp.models.qformer import QFormer
from vrp.models.qformer_fusion import FrameQFormerFusion, JointQFormerFusion, QFormerOptions
from vrp.models.reasoner import VideoReasoner
from vrp.models.tracks import TrackFusion
from vrp.models.vision import HFVisionEncoder, OpenClipVisionEncoder

__all__ = [
    "VIDEO_TOKEN",
    "CausalLM",
    "FrameQFormerFusion",
    "HFVisionEncoder",
    "InstructBlipVideoFusion",
    "JointQFormerFusion",
    "LinearConnector",
    "LlavaVideoConnector",
    "MLPConnector",
    "OpenClipVisionEncoder",
    "PerceiverResampler",
    "PoolOptions",
    "PoolingConnector",
    "QFormer",
    "QFormerOptions",
    "TrackFusion",
    "VideoReasoner",
]
