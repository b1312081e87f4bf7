"""Sources: small readers, one format each, that turn files into :class:`Record` lists (map-style: ``load``) or
streams (``WebDatasetSource``). They read nothing until ``load``/``records`` is called, so configs can name files
that ``prepare_data`` has yet to generate."""

from data_modules.sources.boxes import BoxTable
from data_modules.sources.instructions import LlavaInstructions, VideoChat2Instructions
from data_modules.sources.manifest import CaptionManifest
from data_modules.sources.mixture import Mixture
from data_modules.sources.multiple_choice import MultipleChoice
from data_modules.sources.record import MapSource, Record
from data_modules.sources.webdataset import WebDatasetSource

__all__ = [
    "BoxTable",
    "CaptionManifest",
    "LlavaInstructions",
    "MapSource",
    "Mixture",
    "MultipleChoice",
    "Record",
    "VideoChat2Instructions",
    "WebDatasetSource",
]
