import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny workloads: a second thread only adds contention on shared 2-core machines
# the same for the commands tests start (CLI, server, torchrun ranks), which run beside the other test workers
os.environ.setdefault("OMP_NUM_THREADS", "1")

EXTENDED = os.environ.get("HARMON_EXTENDED_TESTS") == "1"


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core the process may use, at most 4. Tests run torch on one thread (above), so
    a 2-core machine runs two at once; beyond 4, workers mostly wait on the longest tests and cost memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 4))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``extended`` run only with HARMON_EXTENDED_TESTS=1: each repeats at full size what a quicker test
    of the 5-minute suite checks."""
    if EXTENDED:
        return
    skip = pytest.mark.skip(reason="extended: set HARMON_EXTENDED_TESTS=1 to run")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def eval_shapes_seed0() -> tuple[str, dict]:
    """``harmon eval shapes --seed 0`` on the shipped model (tests/golden/record.py), run once for every (extended)
    test that reads it (about a minute): its printed tables without wall times, and its ``--json`` result."""
    from golden import record  # tests/golden/record.py, beside this file

    return record.eval_shapes()


@pytest.fixture(scope="session")
def quick_eval_seed0() -> tuple[dict, dict]:
    """The first 96 prompts and 280 questions of ``harmon eval shapes --seed 0`` on the shipped model, in this
    process (about 8 s): its generation and understanding scores, item for item a prefix of the full run's."""
    from harmon.pipeline import HarmonPipeline
    from harmon.shipped import shipped_model_path
    from harmon.world.evaluate import generation_scores, understanding_scores

    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu")
    generation, _prompts, _images = generation_scores(pipe, 96, seed=0)  # 16 prompts per category
    understanding, _items, _answers = understanding_scores(pipe, 280, seed=0)  # 40 questions per POPE split
    return generation, understanding


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
