"""The tiny shapes-world model that ships inside the package."""

import json

import pytest
import torch

from harmon import cli
from harmon.pipeline import HarmonPipeline
from harmon.shipped import SHIPPED_DIR, shipped_model_path

pytestmark = pytest.mark.skipif(shipped_model_path() is None, reason="this checkout carries no shipped model")


def test_shipped_files_are_small_and_complete():
    size = (SHIPPED_DIR / "model.safetensors").stat().st_size
    assert size <= 25 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB (limit 25)"
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert config["generation"]["image_size"] == 64  # tuned sampling defaults are recorded with the model
    assert (SHIPPED_DIR / "pipeline.json").is_file()  # where and how long it trained


def test_shipped_model_generates_and_answers(tmp_path):
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    image = pipe.generate("a red circle", generator=torch.Generator().manual_seed(0))[0]
    assert image.size == (64, 64)
    answer = pipe.describe(image, "How many circles are there?")
    assert isinstance(answer, str) and answer


def test_cli_defaults_to_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["generate", "a red circle to the left of a blue square", "-o", str(out)]) == 0
    assert cli.main(["describe", str(out), "How many circles are there?"]) == 0
    assert capsys.readouterr().out.strip()
