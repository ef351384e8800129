"""The ``harmon`` command's shape: fast help without torch, --version, the preset names, train through the CLI."""

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from harmon import cli
from harmon.cli.common import DTYPE_NAMES, PRESET_NAMES

SRC = str(Path(__file__).resolve().parents[1] / "src")
HELPS = [
    [],
    ["train"],
    ["generate"],
    ["describe"],
    ["chat"],
    ["serve"],
    ["convert"],
    ["eval"],
    *(["eval", s] for s in ("shapes", "geneval", "pope", "mme", "mc")),
    ["analyze"],
    *(["analyze", a] for a in ("gradcam", "localisation", "probe", "context", "words", "drawn", "codec", "synergy")),
]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_help_of_every_command_loads_neither_torch_nor_transformers():
    code = f"""
import contextlib, io, sys
from harmon.cli import build_parser, main
build_parser()
for argv in {HELPS!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*argv, "--help"])
        except SystemExit as done:
            assert done.code == 0, argv
    assert "usage: harmon" in out.getvalue(), argv
heavy = sorted(m for m in ("torch", "transformers", "harmon.sampling", "harmon.pipeline") if m in sys.modules)
print("heavy:", heavy)
"""
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "heavy: []"


def test_version_is_the_package_version():
    run = subprocess.run(
        [sys.executable, "-m", "harmon.cli", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    try:
        expected = version("harmon")
    except PackageNotFoundError:
        expected = "0+unknown"
    assert run.stdout.strip() == f"harmon {expected}"


def test_preset_names_are_the_samplers_presets():
    from harmon.sampling import PRESETS

    assert tuple(PRESETS) == PRESET_NAMES


def test_dtype_names_are_the_loaders_dtypes():
    from harmon.loading import DTYPES

    assert set(DTYPE_NAMES) == set(DTYPES)


def test_public_api_loads_on_first_use():
    run = _python(
        "import sys, harmon\n"
        "assert 'torch' not in sys.modules\n"
        "from harmon import HarmonPipeline, Harmon, HarmonConfig, harmon_tiny\n"
        "assert HarmonPipeline.__module__ == 'harmon.pipeline' and Harmon.__module__ == 'harmon.model'\n"
        "assert set(harmon.__all__) <= set(dir(harmon))\n"
        "print(harmon.__version__)"
    )
    assert run.returncode == 0, run.stderr
    with pytest.raises(AttributeError):
        import harmon

        harmon.no_such_name  # noqa: B018


def test_train_prints_a_recipe_with_overrides(capsys):
    assert cli.main(["train", "--recipe", "stage1", "--set", "max_steps=7", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["max_steps"] == 7


def test_train_config_error_is_one_line(capsys):
    assert cli.main(["train", "--recipe", "no_such_recipe", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmon train: error: ") and err.count("\n") == 1


def test_train_needs_a_recipe_or_a_config(capsys):
    assert cli.main(["train", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "one of the arguments --recipe --config is required" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("output", "phrase"),
    [
        ("picture", "no file extension"),
        ("picture.xyz", "extension '.xyz'"),
        ("folder.png", "is a folder"),
    ],
)
def test_generate_refuses_a_bad_output_before_any_work(output, phrase, tmp_path, monkeypatch, capsys):
    (tmp_path / "folder.png").mkdir()
    monkeypatch.setattr(
        "harmon.cli.generate.load_pipeline", lambda args: pytest.fail("loaded a model for an unusable output")
    )
    assert cli.main(["generate", "a red circle", "-o", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and phrase in err, err


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
        (["--guidance-scale", "inf"], "guidance_scale must be a finite number"),
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--temperature", "-1"], "temperature must be a finite number"),
        (["--x0-clip", "-1"], "x0_clip must be a finite number > 0"),
        (["--device", "cuda"], "no CUDA device is available"),
        (["--device", "gpu"], "device 'gpu'"),
    ],
)
def test_generate_names_a_bad_setting_in_one_line(flags, phrase, tmp_path, capsys):
    if "cuda" in flags:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    out = tmp_path / "x.png"
    assert cli.main(["generate", "a red circle", "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmon generate: error: ") and err.count("\n") == 1 and phrase in err, err
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="training config not found"):
        cli.main(["--debug", "train", "--config", str(tmp_path / "missing.json")])


def test_convert_refuses_to_write_over_its_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("harmon.cli.generate.load_pipeline", lambda args: pytest.fail("loaded before the check"))
    (tmp_path / "model").mkdir()
    assert cli.main(["convert", "--model", str(tmp_path / "model"), "-o", str(tmp_path / "model")]) == 2
    assert "is (or holds) a file being converted" in capsys.readouterr().err
