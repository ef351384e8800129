import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny workloads: a second thread only adds contention on shared 2-core machines


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def eval_shapes_seed0(tmp_path_factory) -> tuple[str, dict]:
    """``harmon eval shapes --seed 0`` on the shipped model, run once for every test that reads it (about a minute):
    its printed tables and its ``--json`` result."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("eval_shapes") / "seed0.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harmon.cli", "eval", "shapes", "--seed", "0", "--json", str(out)]
    printed = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return printed, json.loads(out.read_text())


@pytest.fixture(scope="module")
def pipe():
    """A tiny random-weight pipeline, built once per test module (a module may define its own ``pipe``)."""
    # imported here, not above: HF_HUB_OFFLINE must be set before anything imports transformers
    from helpers import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory):
    """The module's ``pipe`` saved in our format, for the commands that load a model folder."""
    path = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok():
    """The tiny test tokenizer (trained once per process)."""
    from helpers import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def shards(tmp_path):
    """Two webdataset shards of 6 samples each: jpg + txt, and png + json."""
    from data_helpers import write_two_shards

    return write_two_shards(tmp_path)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One ``harmon serve`` process on the shipped model for every server test (tests/serve_helpers.py)."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from serve_helpers import start_server

    running = start_server(tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    running.stop()
