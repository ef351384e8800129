"""Tiny components shared by the tests (built in well under a second)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harmon import cli
from harmon.config import harmon_tiny
from harmon.model import Harmon
from harmon.pipeline import HarmonPipeline
from harmon.tokenizer import train_tokenizer

CORPUS = [
    "Generate an image: a red circle to the left of a blue square",
    "Generate an image.",
    "How many circles are there? There are two circles.",
    "Describe the image in detail. A green triangle above a yellow square.",
    "Is there a purple circle in the image? Yes. No.",
] * 8


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


def tiny_model(seed: int = 0, **overrides) -> Harmon:
    tok = tiny_tokenizer()
    config = harmon_tiny(vocab_size=len(tok))
    if overrides:
        config = config.replace(**overrides)
    torch.manual_seed(seed)  # the LLM's own init uses the global RNG; our parts take the generator
    model = Harmon(config)
    model.initialize_weights(torch.Generator().manual_seed(seed))
    # Give the zero-initialised output layers of the diffusion head some weight so outputs depend on inputs.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.mar.diffloss.net.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def tiny_pipeline(seed: int = 0) -> HarmonPipeline:
    return HarmonPipeline(tiny_model(seed), tiny_tokenizer())


def pixels(path: Path) -> np.ndarray:
    """An image file's RGB pixels, for comparing written images exactly."""
    return np.asarray(Image.open(path).convert("RGB"))


def harmon_eval(suite: str, model_dir: str | Path, *flags: str) -> int:
    """``harmon eval SUITE FLAGS... --model MODEL_DIR``: the command's exit status."""
    return cli.main(["eval", suite, *flags, "--model", str(model_dir)])
