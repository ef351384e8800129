"""harmon: Harmon (arXiv 2503.21979) in plain PyTorch — one shared MAR encoder for understanding and generation.

The public names load on first use (PEP 562), so importing a light submodule such as ``harmon.cli`` does not
pay for torch and transformers: ``harmon --help`` answers before either is imported.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harmon.config import GenerationDefaults, HarmonConfig, harmon_0_5b, harmon_1_5b, harmon_tiny
    from harmon.model import Harmon
    from harmon.pipeline import HarmonPipeline

# public name -> the module that defines it
_HOMES = {
    "GenerationDefaults": "harmon.config",
    "HarmonConfig": "harmon.config",
    "harmon_0_5b": "harmon.config",
    "harmon_1_5b": "harmon.config",
    "harmon_tiny": "harmon.config",
    "Harmon": "harmon.model",
    "HarmonPipeline": "harmon.pipeline",
}

__all__ = [
    "GenerationDefaults",
    "Harmon",
    "HarmonConfig",
    "HarmonPipeline",
    "__version__",
    "harmon_0_5b",
    "harmon_1_5b",
    "harmon_tiny",
]

try:
    __version__ = _version("harmon")
except _PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        # AttributeError (not ImportError) lets `from harmon import rng` fall back to importing the submodule
        raise AttributeError(f"module 'harmon' has no attribute {name!r}")
    value = getattr(_import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
