"""The generation benchmark's accounting (benchmarks/generate.py): per-phase FLOPs add up, MLP evaluations are
counted once per diffusion step of every masked-autoregressive step, and the roofline uses the bandwidth bound."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def _bench_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_run():
    """The benchmark module, a tiny random-weight pipeline and the arguments of a 3-step run at 64 px."""
    bench = _bench_module()
    torch.manual_seed(0)
    pipe = bench.build_pipeline("tiny", "cpu", torch.float32)
    args = SimpleNamespace(
        config="tiny",
        image_size=64,
        num_iter=3,
        guidance_scale=2.0,
        diffusion_steps="5",
        flops=True,
        preset=None,
        compile=False,
    )
    return bench, pipe, args


def test_generate_benchmark_accounting(monkeypatch):
    bench, pipe, args = _tiny_run()
    res = bench.bench_generate(pipe, 2, args, torch.float32, "cpu", peak=1e12, bandwidth=1e6)
    from harmon.accel import linear as accel_linear

    # The timed run packs its Linear layers (harmon.accel.linear), whose oneDNN op the FLOP counter does not know:
    # the counting rerun must count the same FLOPs as a run with plain layers, and leave packing switched on.
    assert accel_linear.ENABLED
    monkeypatch.setattr(accel_linear, "ENABLED", False)
    plain = bench.bench_generate(pipe, 2, args, torch.float32, "cpu", peak=1e12, bandwidth=1e6)
    assert plain["phases_flops"] == res["phases_flops"]
    assert res["compiled"] is False
    assert res["diffusion_mlp_evals"] == 3 * 5  # one batched evaluation per diffusion step, CFG halves together
    assert sum(res["phases_flops"].values()) == res["flops_per_image"] * 2
    assert {"llm", "mar_encoder", "mar_decoder", "diffusion_head", "vae_decode"} <= set(res["phases_flops"])
    # the fast sampler computes the modulations of all 5 steps at once: one precomputation per MAR step
    assert res["diffusion_modulation_calls"] == 3
    # at 1 MB/s the weight traffic bounds the head: each evaluation reads the weights outside the modulation
    # layers, each precomputation reads those layers once
    mod, total = res["diffusion_modulation_weight_bytes"], res["diffusion_mlp_weight_bytes"]
    assert 0 < mod < total
    ideal = res["phases_ideal_s"]["diffusion_head"]
    assert abs(ideal - (15 * (total - mod) + 3 * mod) / 1e6) < 1e-3 * ideal
    assert abs(res["fraction_of_roofline"] - sum(res["phases_ideal_s"].values()) / res["seconds"]) < 1e-3

    # --preset scales the base settings as generate's presets scale a model's defaults, and the run uses them
    args = SimpleNamespace(**{**vars(args), "diffusion_steps": "100", "preset": "brisk"})
    res = bench.bench_generate(pipe, 2, args, torch.float32, "cpu", peak=1e12, bandwidth=1e6)
    assert res["preset"] == "brisk"
    assert res["settings"]["num_sampling_steps"] == "12" and res["settings"]["diffusion_steps_final"] == 4
    assert res["diffusion_mlp_evals"] == 12 + 8 + 4  # three MAR steps annealed 12 -> 4 (not 3 x 100)


@pytest.mark.slow
def test_compiled_generate_benchmark_counts_the_eager_flops():
    """--compile times generate(compile=True), compiled in the warm-up; the FLOP-counting rerun runs the eager
    layers (the counter does not see inside compiled kernels), so the counts equal an eager run's."""
    import shutil

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    bench, pipe, args = _tiny_run()
    eager = bench.bench_generate(pipe, 2, args, torch.float32, "cpu", peak=1e12, bandwidth=1e6)
    args.compile = True
    res = bench.bench_generate(pipe, 2, args, torch.float32, "cpu", peak=1e12, bandwidth=1e6)
    assert res["compiled"] is True and eager["compiled"] is False
    assert res["phases_flops"] == eager["phases_flops"] and res["diffusion_mlp_evals"] == 3 * 5


def test_roofline_recomputed_against_a_later_peak():
    """main() measures the peak again after the runs and recomputes every fraction against the best peak."""
    bench = _bench_module()
    res = {
        "seconds": 10.0,
        "batch": 1,
        "flops_per_image": 4e12,
        "phases_s": {"llm": 6.0, "diffusion_head": 4.0},
        "phases_flops": {"llm": 3e12, "diffusion_head": 1e12},
        "diffusion_weight_traffic_bytes": 2e12,
    }
    first = dict(bench.roofline(dict(res), peak=1e12, bandwidth=1e12))
    assert first["fraction_of_peak"] == 0.4 and first["phases_ideal_s"]["diffusion_head"] == 2.0
    again = bench.roofline(dict(first), peak=2e12, bandwidth=1e12)
    assert again["fraction_of_peak"] == 0.2 and again["matmul_peak_flops"] == 2e12
    assert again["phases_ideal_s"] == {"llm": 1.5, "diffusion_head": 2.0}  # traffic now bounds the head
    assert abs(again["fraction_of_roofline"] - 0.35) < 1e-12
