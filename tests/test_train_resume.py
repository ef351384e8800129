"""Kill-and-resume under torchrun: a job SIGKILLed mid-run (ranks and launcher), resumed the way a user would
(``--resume auto``), ends exactly where the uninterrupted job ends; that job also computes what one process does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import tiny_tokenizer
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from train_helpers import (
    kill_torchrun,
    launch,
    logged_steps,
    step_losses,
    torchrun,
    torchrun_args,
    toy_config,
)

from harmon.loading import read_weights
from harmon.pipeline import HarmonPipeline
from harmon.train import checkpointing
from harmon.train.checkpointing import latest_checkpoint, save_checkpoint
from harmon.train.config import OptimConfig
from harmon.train.trainer import Trainer

STEPS = 6
STALL = str(Path(__file__).with_name("stall_checkpoint.py"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save_pretrained(str(path))
    return str(path)


def _kill_when(args: list[str], log_path: Path, ready: Callable[[], bool], env: dict[str, str] | None = None) -> None:
    """Start a torchrun job, poll until ``ready()`` (a file the job writes, never a fixed sleep), then SIGKILL the
    launcher and both ranks at once."""
    with open(log_path, "w") as log:
        proc = launch(args, log, env=env, new_session=True)
        try:
            deadline = time.time() + 300
            while not ready():
                assert proc.poll() is None, f"ended before the kill point:\n{log_path.read_text()[-4000:]}"
                assert time.time() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.02)
        finally:
            kill_torchrun(proc)


def _checkpoint_state(path: Path, scratch: Path) -> dict:
    """Everything a checkpoint holds, gathered into plain tensors: weights, optimizer moments, scheduler, RNG, data
    position."""
    dcp_to_torch_save(path, scratch)
    tensors = torch.load(scratch, weights_only=False)
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    return {**tensors, **trainer, "data": json.loads((path / "extra.json").read_text())["data"]}


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested state (dicts, lists) as one flat dict of its leaves, keyed by their path."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    return {k: v for key, value in items for k, v in _leaves(value, f"{prefix}/{key}").items()}


def _assert_same_run(ref: Path, run: Path) -> None:
    """Each step logged once with the reference loss; the same exported weights and final checkpoint."""
    assert logged_steps(run / "metrics.jsonl") == list(range(1, STEPS + 1))
    got, want = step_losses(run / "metrics.jsonl"), step_losses(ref / "metrics.jsonl")
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=0, abs=1e-6), (step, got, want)
    resumed, uninterrupted = (read_weights(d / "final" / "model.safetensors") for d in (run, ref))
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".tmp"]  # the half-written one too
    last = f"step_{STEPS:07d}"
    got_state = _leaves(_checkpoint_state(run / "checkpoints" / last, run / "state.pt"))
    want_state = _leaves(_checkpoint_state(ref / "checkpoints" / last, ref / "state.pt"))
    assert got_state.keys() == want_state.keys()
    for key, value in want_state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got_state[key], value, rtol=0, atol=1e-6, msg=key)
        else:
            assert got_state[key] == value, key


def _assert_computes_one_process(tok_dir: str, tmp_path: Path) -> None:
    """The uninterrupted 2-rank job computes what 1 process with accum_steps=2 computes, and its export (gathered
    from the ranks' shards) loads (tests/test_imagecond_train.py checks the same for DDP)."""
    single = toy_config(
        tok_dir, tmp_path / "single", steps=STEPS, accum_steps=2, parallel="none", optim=OptimConfig(lr=1e-3)
    )
    one = {h["step"]: h["loss"] for h in Trainer(single, device="cpu").run(resume="none")}
    two = step_losses(tmp_path / "ref" / "metrics.jsonl")
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), (step, two, one)
    pipe = HarmonPipeline.from_pretrained(tmp_path / "ref" / "final", device="cpu")
    assert pipe.model.mar.encoder_blocks[0].attn.qkv.weight.shape[0] == 3 * pipe.config.mar.encoder_dim


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        # the replicated-state twin of the sharded case: outside the 5-minute suite, for its time
        pytest.param("ddp", marks=pytest.mark.extended),
        "fsdp",
    ],
)
def test_sigkilled_torchrun_resumes_to_the_uninterrupted_result(mode, tok_dir, tmp_path):
    """SIGKILLed (launcher and ranks) while rank 0 writes a checkpoint, after an earlier one completed, then resumed
    with ``--resume auto``: the same loss at every step, each step logged once, the same weights, optimizer state
    and data position."""
    cfg = toy_config(tok_dir, tmp_path / "ref", steps=STEPS, parallel=mode, save_every=2, optim=OptimConfig(lr=1e-3))
    cfg.save(tmp_path / "cfg.json")
    torchrun(tmp_path, "ref.log", "--resume", "none")
    _assert_computes_one_process(tok_dir, tmp_path)
    cfg.output_dir = str(tmp_path / "run")
    cfg.save(tmp_path / "run.json")
    metrics, ckpts = tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "checkpoints"

    # killed while rank 0 writes the checkpoint of step 4, the one of step 2 complete on disk
    ready = tmp_path / "stalled"
    args = torchrun_args(tmp_path / "run.json", "--resume", "none", entry=(STALL,))
    _kill_when(args, tmp_path / "killed.log", ready.exists, env={"STALL_READY": str(ready), "STALL_STEP": "4"})
    assert max(logged_steps(metrics)) < STEPS and not (tmp_path / "run" / "final").exists()
    (half,) = [p for p in ckpts.iterdir() if p.suffix == ".tmp"]
    assert (half / "trainer.pt").is_file() and not (half / "COMPLETE").exists()
    assert latest_checkpoint(ckpts).name == "step_0000002"  # auto-resume passes over the half-written one

    with open(tmp_path / "resumed.log", "w") as log:
        rc = launch(torchrun_args(tmp_path / "run.json", "--resume", "auto"), log).wait(timeout=400)
    assert rc == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    _assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_a_checkpoint_killed_while_being_replaced_is_not_resumed(tmp_path, monkeypatch):
    """Saving a step whose checkpoint exists (a finished run resumed) deletes the old folder first; a process killed
    during that deletion must leave nothing auto-resume takes for complete."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in (2, 4):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, {})

    def killed_midway(path: Path, ignore_errors: bool = False) -> None:
        (Path(path) / "trainer.pt").unlink()  # the first file is gone when the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {})
    assert latest_checkpoint(tmp_path).name == "step_0000002"
