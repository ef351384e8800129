"""The ``harmon`` command, except that the process writing a checkpoint's trainer.pt (rank 0) stops for good right
after it, inside the checkpoint of step $STALL_STEP: the sharded tensors and trainer.pt are on disk in
``step_XXXXXXX.tmp``, extra.json and the COMPLETE marker are not, and the other rank waits at the closing barrier.
It then creates the file named by $STALL_READY, so a test can kill the job at exactly that point.

Test instrumentation (run as a script: ``torchrun ... tests/stall_checkpoint.py train ...``); nothing in the
package knows about it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harmon.cli import main

_save = torch.save


def _save_then_stall(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    _save(obj, f, *args, **kwargs)
    stalled = f"step_{int(os.environ['STALL_STEP']):07d}.tmp"
    if isinstance(f, (str, os.PathLike)) and Path(f).name == "trainer.pt" and Path(f).parent.name == stalled:
        Path(os.environ["STALL_READY"]).touch()
        while True:
            time.sleep(60)


torch.save = _save_then_stall  # checkpointing looks torch.save up at each call
sys.exit(main())
