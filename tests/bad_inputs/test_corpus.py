"""The bad-input corpus: every case of the table (``corpus_*.py``) run the same way.

A CLI case runs ``harmon.cli.main`` in this process and must end with its exit status, no traceback, and a
message holding its phrases; an API case must raise its exception type with the phrases in ``str(exc)``. For
both, no file the user had (everything under the case's folder, and the shared model copy) may change, and a
failed command leaves no new file behind.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from corpus_api import CASES as API_CASES
from corpus_case import AREAS, Case, Ctx, expand
from corpus_checkpoint import CASES as CHECKPOINT_CASES
from corpus_cli import CASES as CLI_CASES
from corpus_config import CASES as CONFIG_CASES
from corpus_eval import CASES as EVAL_CASES
from corpus_guards import Outcome, ReachedModel, install_tripwires, run_call, run_cli, snapshot, stats
from corpus_image import CASES as IMAGE_CASES
from corpus_prompt import CASES as PROMPT_CASES
from corpus_train import CASES as TRAIN_CASES

from harmon.pipeline import HarmonPipeline
from harmon.shipped import shipped_model_path

TABLE: list[Case] = [
    *CLI_CASES,
    *EVAL_CASES,
    *API_CASES,
    *CONFIG_CASES,
    *CHECKPOINT_CASES,
    *IMAGE_CASES,
    *PROMPT_CASES,
    *TRAIN_CASES,
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, HarmonPipeline, Path]:
    """The shipped model copied once (cases never see the package's own files), loaded once with tripwires, and
    a finished two-step toy training run (checkpoint at step 2) to resume from."""
    from harmon.train.recipes import RECIPES
    from harmon.train.trainer import Trainer
    from harmon.world.recipes import toy

    root = tmp_path_factory.mktemp("shared")
    model = root / "model"
    shutil.copytree(shipped_model_path(), model)
    pipe = HarmonPipeline.from_pretrained(model, device="cpu")
    install_tripwires(pipe)
    cfg = toy(RECIPES["stage2"](), str(model), str(root / "run"), steps=2)
    cfg.save_every, cfg.export = 1, False
    Trainer(cfg, device="cpu").run(resume="none")
    return model, pipe, root / "run"


def _serve_shared_model(monkeypatch: pytest.MonkeyPatch, ctx: Ctx, before_model: bool) -> None:
    """Loading the shared model gives the pipeline loaded once (most CLI cases name it: 0.3 s each saved); with
    ``before_model``, loading any model (or building one to train) raises :class:`ReachedModel`."""
    real = HarmonPipeline.from_pretrained

    def refuse(*args, **kwargs):
        raise ReachedModel("a model was loaded before the bad input was refused")

    def cached(path, device=None, dtype=None):
        plain = device in (None, "cpu") and dtype in (None, torch.float32)
        if plain and Path(path).resolve() == ctx.model.resolve():
            return ctx.pipe
        return real(path, device=device, dtype=dtype)

    monkeypatch.setattr(HarmonPipeline, "from_pretrained", staticmethod(refuse if before_model else cached))
    if before_model:
        monkeypatch.setattr(HarmonPipeline, "from_official", staticmethod(refuse))
        monkeypatch.setattr("harmon.train.trainer.build_model", refuse)


def _run(case: Case, ctx: Ctx) -> Outcome:
    if case.call is not None:
        return run_call(case.call, ctx)
    return run_cli([expand(a, ctx) for a in case.argv])


def _shown(got: Outcome) -> str:
    """One line saying how the case ended, for failure reports."""
    if got.raw is not None:
        head = "raw traceback"
    elif got.code is not None:
        head = f"exit {got.code}"
    else:
        head = "returned" if got.error is None else f"raised {type(got.error).__name__}"
    return f"{head}: {' '.join(got.message.split())[:300]}"


def _names(expect: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    return " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))


def _with_placeholders(message: str, ctx: Ctx) -> str:
    """``message`` with the case's folder and the shared model written ``{ws}`` and ``{model}``, as phrases spell
    them: a phrase then never matches a word of a temporary path (which holds the case id)."""
    for path, name in ((ctx.ws, "{ws}"), (ctx.model, "{model}")):
        message = message.replace(str(path.resolve()), name).replace(str(path), name)
    return message


def _check_outcome(case: Case, ctx: Ctx, got: Outcome) -> None:
    where = f"[{case.id}] {_shown(got)}"
    assert got.raw is None, f"{where}\n{got.raw[-1500:]}"
    if case.kind == "cli":
        assert got.code == case.expect, f"expected exit {case.expect}; {where}"
        assert "Traceback" not in got.message, where
    elif case.expect is None:
        assert got.error is None, f"expected a result; {where}"
    else:
        assert isinstance(got.error, case.expect), f"expected {_names(case.expect)}; {where}"
    missing = [p for p in case.phrases if p not in _with_placeholders(got.message, ctx)]
    assert not missing, f"message lacks {missing}; {where}"


def _check_files(case: Case, ctx: Ctx, before: dict[str, str], after: dict[str, str], failed: bool) -> None:
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"[{case.id}] user files changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    assert not (failed and new), f"[{case.id}] a failed command left new files: {new}"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in TABLE
    ],
)
def test_bad_input(case: Case, shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, pipe, run = shared
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ws = tmp_path / "ws"
    ws.mkdir()
    ctx = Ctx(ws=ws, model=model, pipe=pipe, run=run)
    monkeypatch.chdir(ws)  # commands' default outputs (out.png, gradcam.png) land in the case's folder
    if case.setup is not None:
        case.setup(ctx)
    before, shared_before = snapshot(ws), stats(model)
    _serve_shared_model(monkeypatch, ctx, case.before_model)
    got = _run(case, ctx)
    monkeypatch.undo()
    _check_outcome(case, ctx, got)
    _check_files(case, ctx, before, snapshot(ws), failed=case.expect not in (0, None))
    assert stats(model) == shared_before, f"[{case.id}] the shared model copy was written"


def test_the_table_is_large_unique_and_covers_every_area() -> None:
    ids = [c.id for c in TABLE]
    assert len(ids) >= 150 and len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    assert set(Counter(c.area for c in TABLE)) == set(AREAS)
    generic = {"error", "harmon", "invalid", "failed"}  # a phrase must name the problem, not just say there is one
    assert not [c.id for c in TABLE if any(p.strip(" :'").lower() in generic for p in c.phrases)]
