"""Generation and understanding speed: latency, throughput, per-phase breakdown, FLOPs and fraction of peak.

    python benchmarks/generate.py --config 0.5b --image-size 256 --num-iter 64 --diffusion-steps 100
    python benchmarks/generate.py --config shapes            # the shipped shapes model (if installed)
    python benchmarks/generate.py --compare A.jsonl B.jsonl   # ratios of matching results
    python benchmarks/generate.py --config 0.5b --image-size 256 --num-iter 64 --preset lean --no-flops

Random weights for the named architectures (tiny, 0.5b, 1.5b), nothing downloaded. Phases are timed with
wrappers around the model's pieces (MAR encoder, LLM, MAR decoder, diffusion head, VAE decode; the rest is
"other"). FLOPs are counted by torch's FlopCounterMode on a rerun of the same call (matmul/conv/attention FLOPs from
the op shapes), per phase; the matmul peak (a large square matmul in the same dtype, the best of the plain and the
packed-weight routes) and the memory read bandwidth of this machine are measured in the same run, before and after
the timed calls (the best counts), so "fraction of peak" compares like with like. The roofline fraction counts the
diffusion MLP at its bandwidth bound (it re-reads its weights on every evaluation; see bench_generate).
``--compile`` runs the diffusion MLP compiled (``generate(compile=True)``; the untimed warm-up compiles it and
its seconds are reported as ``warmup_s``). ``--no-pack`` runs plain Linear layers instead of packed weights;
``--straightforward`` also runs generation without harmon.accel's strategies: the diffusion head sampled by
``DiffLoss.sample`` and every row through the prompt and the MAR encoder. ``--dtype auto``: harmon.cpuinfo's choice,
with its reason; ``--memory [CONFIG ...]``: benchmarks/memory.py's table. One JSON line per result, with the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch


def _best_seconds(fn, device: str, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` after one warm-up call (CUDA: synchronised)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def measure_peak(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best achieved FLOP/s of an n x n x n matmul (the machine's practical matmul peak), by each route the model
    can take: the plain matmul and, where harmon.accel.linear applies (CPU float32, or bfloat16 on a CPU with bf16
    matmul instructions), oneDNN with a packed weight.
    ``peak`` is the best of them, so a faster route cannot make the fraction of peak look better than it is."""
    from harmon.accel import linear as accel_linear

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = {"plain": 2 * n**3 / _best_seconds(lambda: a @ b, device, repeats)}
    if device == "cpu" and dtype in accel_linear.packable_dtypes() and accel_linear.available():
        layer = torch.nn.Linear(n, n, bias=False, dtype=dtype)
        with torch.no_grad(), accel_linear.packed_linears(layer):
            out["packed"] = 2 * n**3 / _best_seconds(lambda: layer(a), device, repeats)
    out["peak"] = max(out.values())
    return out


def measure_bandwidth(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """Best achieved read bandwidth (bytes/s) summing a tensor far larger than the caches."""
    x = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    return x.numel() * x.element_size() / _best_seconds(x.sum, device, repeats)


class PhaseTimer:
    """Accumulate wall time of named callables while active (CPU: synchronous; CUDA: synchronised).

    With ``counter`` (an active FlopCounterMode) it also attributes FLOPs to the phases (the counter's total before
    and after each call) instead of timing them.
    """

    def __init__(self, device: str, counter=None) -> None:
        self.device = device
        self.counter = counter
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.mlp_evals = 0  # evaluations of the diffusion MLP (nested inside the diffusion-head phase)
        self.modulation_calls = 0  # precomputations of its adaLN modulations (the fast sampler's chunks)
        self._depth = 0

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self._depth:  # nested phases count to the outer one
                return fn(*args, **kwargs)
            self._depth += 1
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            f0 = self.counter.get_total_flops() if self.counter is not None else 0
            try:
                return fn(*args, **kwargs)
            finally:
                if self.device.startswith("cuda"):
                    torch.cuda.synchronize()
                self.seconds[name] += time.perf_counter() - t
                if self.counter is not None:
                    self.flops[name] += self.counter.get_total_flops() - f0
                self._depth -= 1

        return timed

    @contextlib.contextmanager
    def attach(self, model):
        from harmon.accel import head

        # The diffusion head is sampled by DiffLoss.sample (straightforward) or harmon.accel.head.sample_fast, which
        # generate's head sampler looks up when it is built.
        targets = [
            (model.mar, "forward_encoder", "mar_encoder"),
            (model.llm.model, "forward", "llm"),
            (model, "refine_with_llm", "llm"),  # a token cache runs the LLM's layers without its forward
            (model.mar, "forward_decoder", "mar_decoder"),
            (model.mar.diffloss, "sample", "diffusion_head"),
            (head, "sample_fast", "diffusion_head"),
            (model.vae, "decode_latents", "vae_decode"),
            (model.vae, "encode_latents", "vae_encode"),
        ]
        net = model.mar.diffloss.net
        # Every evaluation of the diffusion MLP (straightforward or with precomputed modulations), and every
        # computation of the modulations (nested inside the head phase; the fast sampler does one per chunk of steps).
        counted = [
            (net, "forward", "mlp_evals"),
            (head, "forward_modulated", "mlp_evals"),
            (head, "modulations", "modulation_calls"),
        ]
        saved = [(obj, attr, obj.__dict__.get(attr)) for obj, attr, _ in targets + counted]
        for obj, attr, name in targets:
            setattr(obj, attr, self.wrap(name, getattr(obj, attr)))
        for obj, attr, field in counted:
            setattr(obj, attr, self._count(field, getattr(obj, attr)))
        try:
            yield self
        finally:
            for obj, attr, own in reversed(saved):
                if own is None:
                    delattr(obj, attr)  # back to the class method
                else:
                    setattr(obj, attr, own)  # a module's own function

    def _count(self, field: str, fn):
        def counted(*args, **kwargs):
            setattr(self, field, getattr(self, field) + 1)
            return fn(*args, **kwargs)

        return counted


def build_pipeline(config: str, device: str, dtype: torch.dtype):
    import harmon.world  # noqa: F401 (registers the "shapes" size in CONFIGS)
    from harmon.config import CONFIGS
    from harmon.model import Harmon
    from harmon.pipeline import HarmonPipeline

    if config == "shapes-shipped":
        from harmon.shipped import shipped_model_path

        return HarmonPipeline.from_pretrained(shipped_model_path(), device=device, dtype=dtype)
    from harmon.tokenizer import train_tokenizer

    tok = train_tokenizer(["Generate an image: a red circle", "Describe the image."] * 4, vocab_size=300)
    cfg = CONFIGS[config]() if config not in ("tiny", "shapes") else CONFIGS[config](vocab_size=320)
    torch.manual_seed(0)
    with torch.device(device):
        model = Harmon(cfg)
    model.initialize_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():  # the zero-initialised output layers would make the head a no-op
        for p in model.mar.diffloss.net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    pipe = HarmonPipeline(model, tok)
    return pipe.to(device=device, dtype=dtype)


def bench_generate(pipe, batch: int, args, dtype, device: str, peak: float, bandwidth: float | None = None) -> dict:
    """Time one generation of ``batch`` images by phase; with ``args.flops``, rerun it under a FLOP counter.

    Roofline: each phase's ideal time is its FLOPs at the matmul peak, except the diffusion head, whose MLP at small
    batch re-reads its weights on every evaluation: its ideal time is the larger of its FLOPs at the peak and its
    weight traffic at the measured read ``bandwidth`` (evaluations x weight bytes, except that the adaLN modulation
    layers count once per precomputation when the sampler computes them ahead for many steps).
    ``fraction_of_roofline`` = sum of ideal times / measured time, so 1.0 means every phase ran at its bound.
    """
    settings = {
        "image_size": args.image_size,
        "num_iter": args.num_iter,
        "guidance_scale": args.guidance_scale,
        "num_sampling_steps": args.diffusion_steps,
        "output_type": "pt",
    }
    if args.preset:  # the preset scales the base settings given, as `generate --preset` scales a model's defaults
        from harmon.sampling import preset_settings

        settings.update(preset_settings(args.preset, args.num_iter, args.diffusion_steps))
    prompts = ["a red circle to the left of a blue square"] * batch
    t = time.perf_counter()  # warm-up; with --compile it also compiles the diffusion MLP (reported as warmup_s)
    pipe.generate(
        prompts, generator=torch.Generator().manual_seed(0), compile=args.compile, **{**settings, "num_iter": 2}
    )
    warmup = time.perf_counter() - t
    timer = PhaseTimer(device)
    with timer.attach(pipe.model):
        t = time.perf_counter()
        pipe.generate(prompts, generator=torch.Generator().manual_seed(0), compile=args.compile, **settings)
        total = time.perf_counter() - t
    phases = dict(timer.seconds)
    phases["other"] = max(0.0, total - sum(phases.values()))
    res = {
        "bench": "generate",
        "config": args.config,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "image_size": args.image_size,
        "num_iter": args.num_iter,
        "diffusion_steps": args.diffusion_steps,
        "preset": args.preset,
        "settings": {k: v for k, v in settings.items() if k != "output_type"},
        "guidance_scale": args.guidance_scale,
        "batch": batch,
        "seconds": total,
        "images_per_s": batch / total,
        "seconds_per_image": total / batch,
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "compiled": args.compile,
        "warmup_s": round(warmup, 2),
    }
    if args.flops:
        res.update(count_flops(pipe, prompts, settings, device))
    return roofline(res, peak, bandwidth)


def count_flops(pipe, prompts: list[str], settings: dict, device: str) -> dict:
    """FLOPs per image and per phase of one eager generation of ``prompts``, with the diffusion MLP's evaluations,
    its modulation precomputations and the weight traffic they imply (see ``bench_generate``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from harmon.accel import linear as accel_linear

    counter = FlopCounterMode(display=False)
    counted = PhaseTimer(device, counter=counter)
    enabled, accel_linear.ENABLED = accel_linear.ENABLED, False  # the counter knows aten matmuls, not oneDNN's op
    try:  # nor compiled kernels: the count runs the eager layers (the same FLOPs)
        with counter, counted.attach(pipe.model):
            pipe.generate(prompts, generator=torch.Generator().manual_seed(0), **settings)
    finally:
        accel_linear.ENABLED = enabled
    flops = counter.get_total_flops()
    phase_flops = dict(counted.flops)
    phase_flops["other"] = max(0, flops - sum(phase_flops.values()))
    net = pipe.model.mar.diffloss.net
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    mod_bytes = sum(p.numel() * p.element_size() for layer in net.modulation_layers() for p in layer.parameters())
    evals, mod_calls = counted.mlp_evals, counted.modulation_calls
    # Weight traffic: every evaluation reads the weights; the modulation layers' weights are read once per
    # evaluation by the straightforward path, once per precomputation by the fast sampler.
    traffic = evals * (weight_bytes - mod_bytes) + (mod_calls if mod_calls else evals) * mod_bytes
    return {
        "flops_per_image": flops / len(prompts),
        "phases_flops": phase_flops,
        "diffusion_mlp_evals": evals,
        "diffusion_modulation_calls": mod_calls,
        "diffusion_mlp_weight_bytes": weight_bytes,
        "diffusion_modulation_weight_bytes": mod_bytes,
        "diffusion_weight_traffic_bytes": traffic,
    }


def roofline(res: dict, peak: float, bandwidth: float | None = None) -> dict:
    """(Re)compute the fractions of ``res`` (a bench_generate result) against ``peak`` FLOP/s and ``bandwidth``."""
    res["matmul_peak_flops"] = peak
    if "phases_flops" not in res:
        return res
    total, phases, phase_flops = res["seconds"], res["phases_s"], res["phases_flops"]
    flops = res["flops_per_image"] * res["batch"]
    res.update({"achieved_flops": flops / total, "fraction_of_peak": flops / total / peak})
    ideal = {k: f / peak for k, f in phase_flops.items()}
    if bandwidth:
        traffic_s = res["diffusion_weight_traffic_bytes"] / bandwidth
        ideal["diffusion_head"] = max(ideal.get("diffusion_head", 0.0), traffic_s)
        res["read_bandwidth_bytes_per_s"] = bandwidth
    res["phases_ideal_s"] = ideal
    res["phases_fraction_of_bound"] = {k: round(ideal[k] / phases[k], 3) for k in ideal if phases.get(k)}
    res["fraction_of_roofline"] = sum(ideal.values()) / total
    return res


def bench_understanding(pipe, args, device: str) -> dict:
    """Prefill time and greedy decode tokens/s of the LLM, with plain layers and with packed ones, as ``describe``
    decodes (:mod:`harmon.accel.linear`, bf16 included where the CPU has bf16 matmuls), and whether both routes
    gave the same tokens."""
    from PIL import Image

    from harmon.accel.linear import packed_linears

    image = Image.new("RGB", (args.image_size, args.image_size), (200, 30, 30))
    embeds = pipe.understanding_inputs(image, "Describe the image in detail.", image_size=args.image_size)
    llm = pipe.model.llm

    def run() -> tuple[float, float, list[int]]:
        out = llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)  # warm-up (and packing)
        t = time.perf_counter()
        out = llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - t
        cache = out.past_key_values if getattr(out, "cache", None) is None else out.cache
        ids = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = []
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = llm(input_ids=ids, cache=cache, use_cache=True)
            cache = out.past_key_values if getattr(out, "cache", None) is None else out.cache
            ids = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(ids))
        return prefill, args.decode_tokens / (time.perf_counter() - t), tokens

    with torch.no_grad():
        prefill, rate, tokens = run()
        with packed_linears(llm, bf16=True):
            packed_prefill, packed_rate, packed_tokens = run()
    return {
        "bench": "understanding",
        "config": args.config,
        "device": device,
        "image_size": args.image_size,
        "prompt_tokens": embeds.shape[1],
        "prefill_s": prefill,
        "decode_tokens_per_s": rate,
        "packed_prefill_s": packed_prefill,
        "packed_decode_tokens_per_s": packed_rate,
        "packed_same_tokens": packed_tokens == tokens,
    }


# the fields that make two result lines comparable
COMPARE_KEYS = ("bench", "config", "dtype", "quantize", "image_size", "num_iter", "diffusion_steps", "preset")
COMPARE_KEYS += ("guidance_scale", "batch")


def compare(a_path: str, b_path: str) -> None:
    def load(p):
        return [json.loads(line) for line in Path(p).read_text().splitlines() if line.startswith("{")]

    def key(r):
        return tuple(r.get(k) for k in COMPARE_KEYS)

    b_by_key = {key(r): r for r in load(b_path)}
    for r in load(a_path):
        other = b_by_key.get(key(r))
        if other is None:
            continue
        for metric in ("images_per_s", "decode_tokens_per_s", "samples_per_s"):
            if metric in r and metric in other:
                print(f"{key(r)} {metric}: {other[metric] / r[metric]:.2f}x (B/A)")


def straightforward_generation() -> None:
    """Make ``HarmonPipeline.generate`` sample without harmon.accel's strategies: the model's own methods
    (``DiffLoss.sample``, every row through the prompt and the MAR encoder), as the original does."""
    import harmon.pipeline
    from harmon.sampling import generate_tokens

    def plain(*args, sample_head=None, prompt_cache=None, encode_image=None, **kwargs):
        return generate_tokens(*args, **kwargs)

    harmon.pipeline.generate_tokens = plain


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="tiny | shapes | 0.5b | 1.5b | shapes-shipped")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"], help="auto: harmon.cpuinfo's choice")
    p.add_argument("--quantize", choices=["int8"], help="weight-only int8 LLM and MAR blocks (harmon.accel.quant)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-iter", type=int, default=64)
    p.add_argument("--diffusion-steps", default="100")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument(
        "--preset",
        help="a speed preset of generate (harmon.sampling.PRESETS), applied to --num-iter and "
        "--diffusion-steps as it is to a model's defaults",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (throughput: the largest)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP-counting rerun")
    p.add_argument("--understanding", action="store_true", help="also time prefill and decode")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    no_pack = "plain Linear layers instead of packed weights (harmon.accel.linear), for a side-by-side run"
    p.add_argument("--no-pack", dest="pack", action="store_false", help=no_pack)
    p.add_argument(
        "--straightforward",
        action="store_true",
        help="the straightforward path: plain layers, DiffLoss.sample and every row through the prompt and the "
        "MAR encoder (no harmon.accel strategies), for a side-by-side run",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="generate(compile=True): the diffusion MLP through torch.compile (compiled in the warm-up)",
    )
    p.add_argument("--out", help="append JSON lines here")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("--memory", nargs="*", metavar="CONFIG", help="peak memory table instead (benchmarks/memory.py)")
    return p


def main() -> int:
    p = build_parser()
    args = p.parse_args()
    if args.memory is not None:  # benchmarks/memory.py's table: each measurement in a fresh process
        import memory

        return memory.main(["--configs", *(args.memory or ["0.5b", "1.5b"]), *(["--out", args.out] * bool(args.out))])
    if args.compare:
        compare(*args.compare)
        return 0
    if args.compile and args.straightforward:
        p.error("--compile runs the fast sampler; --straightforward is the reference without it")
    if args.threads:
        torch.set_num_threads(args.threads)
    from harmon.accel import linear as accel_linear

    accel_linear.ENABLED = args.pack and not args.straightforward
    if args.straightforward:
        straightforward_generation()
    from harmon.cpuinfo import choose_dtype, cpu_info

    fixed = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dtype, reason = choose_dtype(args.device) if args.dtype == "auto" else (fixed, f"{args.dtype}: asked")
    pipe = build_pipeline(args.config, args.device, dtype).quantize(args.quantize)
    before = measure_peak(dtype, args.device)
    bandwidth = measure_bandwidth(args.device)
    results = [bench_generate(pipe, b, args, dtype, args.device, before["peak"], bandwidth) for b in args.batch]
    if args.understanding:
        results.append(bench_understanding(pipe, args, args.device))
    # A shared machine's speed drifts: the peak is the best of measurements before and after the runs (the strict
    # choice), and every fraction is recomputed against it.
    after = measure_peak(dtype, args.device)
    bandwidth = max(bandwidth, measure_bandwidth(args.device))
    peaks = {k: max(before.get(k, 0.0), after.get(k, 0.0)) for k in set(before) | set(after)}
    for res in results:
        if res["bench"] == "generate":
            roofline(res, peaks["peak"], bandwidth)
    packed = accel_linear.ENABLED and accel_linear.available() and args.device == "cpu"
    packed = packed and dtype in accel_linear.packable_dtypes()
    for res in results:
        res.update({"packed_linears": packed, "straightforward": args.straightforward, "matmul_peaks_flops": peaks})
        res.update({"quantize": args.quantize, "dtype_reason": reason, **cpu_info()})
        line = json.dumps(res)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
