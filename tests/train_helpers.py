"""Shared by the training tests: toy configs, launching the CLI (alone or under torchrun), reading metrics.jsonl,
and killing a torchrun job with every rank it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from harmon.train.config import TrainConfig
from harmon.train.recipes import RECIPES
from harmon.world.recipes import toy

SRC = str(Path(__file__).resolve().parents[1] / "src")


def toy_config(tok_dir: str, out: str | Path, steps: int = 4, **kw) -> TrainConfig:
    cfg = toy(RECIPES["stage2"](), tok_dir, str(out), steps=steps)
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def launch(args: list[str], log: IO, env: dict[str, str] | None = None, new_session: bool = False) -> subprocess.Popen:
    """``python *args`` with the worktree's sources; ``new_session`` gives it its own process group to kill."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=new_session
    )


def torchrun_args(config: str | Path, *extra: str, entry: tuple[str, ...] = ("-m", "harmon.cli")) -> list[str]:
    """``harmon train --config config`` on CPU under torchrun, 2 processes (gloo); ``entry`` replaces the CLI."""
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*run, *entry, "train", "--config", str(config), "--device", "cpu", *extra]


def torchrun(tmp_path: Path, log_name: str, *extra: str) -> None:
    """The trainer under torchrun, 2 processes (gloo), on the config saved at tmp_path / cfg.json, to the end."""
    with open(tmp_path / log_name, "w") as log:
        rc = launch(torchrun_args(tmp_path / "cfg.json", *extra), log).wait(timeout=400)
    assert rc == 0, (tmp_path / log_name).read_text()[-4000:]


def step_losses(path: Path) -> dict[int, float]:
    """The loss of each training step in a metrics.jsonl (eval lines carry no loss)."""
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def logged_steps(path: Path) -> list[int]:
    """Steps of the complete lines of a metrics.jsonl that may be being appended to (empty while it is missing)."""
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last piece is unterminated: still being written
    return [json.loads(line)["step"] for line in lines]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, from /proc (no psutil here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited while we looked
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def kill_torchrun(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun launcher started with ``new_session`` and every rank it started, as a node failure would.

    torchrun starts each rank in a session of its own, so killing the launcher's process group alone would leave
    the ranks training: each rank's group is killed too (reaching any loader workers it forked), ranks first so
    the launcher never sees one die and reacts. Returns once none of them runs.
    """
    ranks = _children(proc.pid)
    for pid in [*ranks, proc.pid]:
        try:
            group = os.getpgid(pid)
            assert group != os.getpgrp(), "the job must run in its own session (launch(..., new_session=True))"
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while not all(_gone(pid) for pid in ranks):
        assert time.time() < deadline, f"ranks {ranks} survived SIGKILL"
        time.sleep(0.05)
