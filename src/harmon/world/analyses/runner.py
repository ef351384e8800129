"""What every analysis command does around its study: logging, threads, the model, and the report."""

from __future__ import annotations

import json
import logging

import torch

logger = logging.getLogger(__name__)


def load_for_analysis(model: str | None, threads: int | None = None):
    """Set up logging and the thread count, and load the model folder ``model`` (None: the shipped model) on the
    CPU in float32."""
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path

    model = str(shipped_model_path()) if model is None else model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if threads:
        torch.set_num_threads(threads)
    return HarmonPipeline.from_pretrained(model, device="cpu", dtype=torch.float32)


def report(text: str, result: dict, json_path: str | None = None) -> None:
    """Log the study's table ``text`` and write ``result`` to ``json_path`` when one is given."""
    logger.info("%s", text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
