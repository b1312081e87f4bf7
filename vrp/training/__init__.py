"""Training: the two stage LightningModules, their losses, checkpoint policy, strategies and the feature cache."""

from vrp.training.callbacks import NonFiniteGuard, ProgressLog, RNGState, StepLossLog
from vrp.training.checkpoint import AtomicCheckpointIO
from vrp.training.stage1 import AlignmentPretraining
from vrp.training.stage2 import InstructionTuning
from vrp.training.strategies import BlockWrapPolicy

__all__ = [
    "AlignmentPretraining",
    "AtomicCheckpointIO",
    "BlockWrapPolicy",
    "InstructionTuning",
    "NonFiniteGuard",
    "ProgressLog",
    "RNGState",
    "StepLossLog",
]
