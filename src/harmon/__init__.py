"""harmon: Harmon (arXiv 2503.21979) in plain PyTorch — one shared MAR encoder for understanding and generation."""

from harmon.config import GenerationDefaults, HarmonConfig, harmon_0_5b, harmon_1_5b, harmon_tiny
from harmon.model import Harmon
from harmon.pipeline import HarmonPipeline

__all__ = [
    "GenerationDefaults",
    "Harmon",
    "HarmonConfig",
    "HarmonPipeline",
    "harmon_0_5b",
    "harmon_1_5b",
    "harmon_tiny",
]
__version__ = "0.1.0"
