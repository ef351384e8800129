"""Golden outputs of the shipped model: generated PNG bytes, answers and training losses must not change.

``tests/golden/record.py`` wrote them; a change that is meant to alter outputs re-records them and says why.
Exact bytes are compared on the kind of CPU that recorded them (float results may differ between instruction
sets); elsewhere pixels must agree within a small tolerance and answers exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import record  # tests/golden/record.py
from PIL import Image

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "golden.json").read_text())
SAME_CPU = EXPECTED["cpu"] == record.cpu_fingerprint()


def test_generated_images_are_the_recorded_bytes():
    got = record.generations()
    assert [(p, s) for p, s, _ in got] == [(g["prompt"], g["seed"]) for g in EXPECTED["generate"]]
    for (_, _, data), want in zip(got, EXPECTED["generate"]):
        if SAME_CPU:
            assert hashlib.sha256(data).hexdigest() == want["sha256"], want["file"]
        else:
            a = np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)
            b = np.asarray(Image.open(GOLDEN / want["file"]), dtype=np.int16)
            assert np.abs(a - b).max() <= 8, want["file"]


def test_answers_are_the_recorded_ones():
    assert record.answers() == EXPECTED["describe"]


def test_training_losses_are_the_recorded_ones(tmp_path):
    losses = record.training_losses(tmp_path / "run")
    if SAME_CPU:
        assert losses == EXPECTED["train_losses"]
    else:
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(EXPECTED["train_losses"]), rtol=1e-4, atol=1e-5)


def test_eval_shapes_scores_the_recorded_items(quick_eval_seed0):
    """The first 96 prompts and 280 questions of `harmon eval shapes --seed 0` are judged right or wrong item for item
    as in the recorded full run (the prompts, scenes and sampling noise of a shorter run are the full run's first)."""
    generation, understanding = quick_eval_seed0
    items = json.loads((GOLDEN / "eval_shapes_seed0_items.json").read_text())
    assert record.judgements(generation) == items["generation"][:96]
    assert record.judgements(understanding) == items["understanding"][:280]


@pytest.mark.slow
@pytest.mark.extended
def test_eval_shapes_prints_the_recorded_tables(eval_shapes_seed0):
    tables, result = eval_shapes_seed0  # harmon eval shapes --seed 0, wall times left out (tests/conftest.py)
    assert tables == (GOLDEN / "eval_shapes_seed0.txt").read_text()
    items = json.loads((GOLDEN / "eval_shapes_seed0_items.json").read_text())
    for task in ("generation", "understanding"):
        assert record.judgements(result[task]) == items[task], task
