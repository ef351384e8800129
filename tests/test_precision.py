"""dtype="auto" (the choice from faked CPU flags), bf16 and weight-only int8 against fp32 on the shipped model, and
the int8 layers themselves. Nothing here needs bf16 hardware: the choice is tested on given flags, and bf16 runs
(slowly, emulated) on any CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harmon.accel import quant
from harmon.cli.common import QUANTIZE_NAMES
from harmon.cpuinfo import choose_dtype, cpu_info, cpu_line, has_bf16_matmul
from harmon.loading import resolve_device
from harmon.pipeline import HarmonPipeline
from harmon.shipped import shipped_model_path


def test_auto_picks_bf16_only_with_bf16_matmul_flags():
    assert choose_dtype("cpu", {"avx2", "avx512f", "avx512_bf16"})[0] == torch.bfloat16
    assert choose_dtype("cpu", {"avx2", "amx_tile", "amx_bf16"})[0] == torch.bfloat16
    dtype, reason = choose_dtype("cpu", {"avx2", "avx512f"})
    assert dtype == torch.float32 and "no bf16 matmul" in reason
    assert choose_dtype("mps", set())[0] == torch.float32
    assert has_bf16_matmul({"amx_bf16"}) and not has_bf16_matmul(set())


def test_auto_reaches_the_loaders(monkeypatch):
    monkeypatch.setattr("harmon.loading.choose_dtype", lambda device: (torch.bfloat16, "faked"))
    assert resolve_device("cpu", "auto") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device("cpu", None)[1] == torch.float32  # the default stays fp32 on CPU
    with pytest.raises(ValueError, match="auto"):
        resolve_device("cpu", "bf17")


def test_cpu_info_names_the_machine():
    info = cpu_info()
    assert {"cpu", "cpu_flags", "threads", "torch"} <= set(info)
    assert str(info["threads"]) in cpu_line(info) and info["torch"] in cpu_line(info)
    assert QUANTIZE_NAMES == quant.QUANTIZE_MODES


@pytest.fixture(scope="module")
def fp32_latents():
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype="fp32")
    return pipe.generate(
        "a red circle", num_sampling_steps="20", generator=torch.Generator().manual_seed(0), output_type="latent"
    )


@pytest.mark.parametrize(
    "dtype,quantize,fp32_head",
    [("bf16", None, False), ("bf16", None, True), ("fp32", "int8", False), ("bf16", "int8", False)],
)
def test_bf16_and_int8_latents_stay_near_fp32(fp32_latents, dtype, quantize, fp32_head):
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype=dtype).quantize(quantize)
    if fp32_head:  # the diffusion head may stay fp32 while the rest is bf16
        pipe.model.mar.diffloss.float()
    out = pipe.generate(
        "a red circle", num_sampling_steps="20", generator=torch.Generator().manual_seed(0), output_type="latent"
    )
    # bf16 keeps 8 mantissa bits: a few rounding steps per layer, over 8 MAR and 20 diffusion steps. With int8
    # weights as well the two roundings compound through the sampling chain (the shipped model: 5.8 % of the
    # largest latent at most, 4.3 % of the mean magnitude on average; each alone under 1 %)
    bound = 0.08 if dtype == "bf16" and quantize else 0.05
    assert (out.float() - fp32_latents).abs().max() <= bound * fp32_latents.abs().max()
    assert quant.is_quantized(pipe.model) == (quantize is not None)


def test_int8_pipeline_describes_and_refuses_to_save(tmp_path):
    pipe = HarmonPipeline.from_pretrained(shipped_model_path(), device="cpu", dtype="fp32")
    pipe.quantize("int8")
    llm = pipe.model.llm
    assert isinstance(llm.model.embed_tokens, quant.Int8Embedding) and isinstance(llm.lm_head, quant.TiedInt8Head)
    assert isinstance(pipe.describe(Image.new("RGB", (64, 64), "white"), max_new_tokens=4), str)
    with pytest.raises(ValueError, match="cannot be saved"):
        pipe.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="already quantized"):
        pipe.quantize("int8")
    with pytest.raises(ValueError, match="int4"):
        quant.quantize_model(pipe.model, "int4")


@pytest.mark.parametrize(
    "rows,width,dtype",
    [(3, 64, torch.bfloat16), (40, 64, torch.bfloat16), (3, 70, torch.bfloat16), (5, 70, torch.float32)],
)
def test_int8_linear_is_the_dequantized_layer(rows, width, dtype):
    """The kernel route (a few bf16 rows, width a multiple of 16) and the dequantizing route give the same
    product as a plain Linear with the dequantized weight; widths the kernel cannot take never reach it."""
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(width, 48)
    int8 = quant.Int8Linear.from_linear(layer)
    dequantized = int8.weight_int8.float() * int8.scale[:, None]
    assert (dequantized - layer.weight).abs().max() <= layer.weight.abs().amax(1).max() / 254 + 1e-7
    x = torch.randn(2, rows, width, generator=g).to(dtype)
    want = F.linear(x.float(), dequantized, layer.bias)
    got = int8(x)
    assert got.shape == (2, rows, 48) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2 * want.abs().max()
    assert (got.float() - want).abs().max() <= tol


def test_int8_tall_tables_are_dequantized_in_blocks(monkeypatch):
    monkeypatch.setattr(quant, "DEQUANTIZE_ROWS", 16)
    q = torch.randint(-127, 128, (40, 32), dtype=torch.int8)
    scale, x = torch.rand(40), torch.randn(3, 32)
    want = F.linear(x, q.float() * scale[:, None])
    assert (quant.int8_matmul(x, q, scale) - want).abs().max() <= 1e-4 * want.abs().max()


def test_int8_halves_the_block_weights():
    layer = torch.nn.Linear(256, 256)
    assert quant.weight_bytes(quant.Int8Linear.from_linear(layer)) < 0.3 * quant.weight_bytes(layer)


def test_cli_flags_load_an_auto_dtype_int8_pipeline(monkeypatch):
    from harmon.cli import build_parser
    from harmon.cli.common import load_pipeline

    monkeypatch.setattr("harmon.loading.choose_dtype", lambda device: (torch.bfloat16, "faked"))
    args = build_parser().parse_args(["describe", "x.png", "--dtype", "auto", "--quantize", "int8", "--device", "cpu"])
    pipe = load_pipeline(args)
    assert pipe.model.dtype == torch.bfloat16 and quant.is_quantized(pipe.model)
