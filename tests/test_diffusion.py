"""Diffusion schedule, DiffLoss MLP and sampler: values derived by hand from the reference (§6, §7)."""

import json
import math
from pathlib import Path

import pytest
import torch

from harmon.diffloss import DiffLoss, DiffLossConfig, SimpleMLPAdaLN, timestep_embedding
from harmon.diffusion import (
    GaussianDiffusion,
    cosine_alpha_bar,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    respaced_betas,
    space_timesteps,
)

KEYS_JSON = Path(__file__).resolve().parent / "data" / "official-state-dict-keys.json"
TINY = dict(target_channels=4, z_channels=8, width=32, depth=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds OpenMP spin-waits, which on a loaded 2-core
    machine made the overfit test 10-30x slower (measured: 0.8 s with 1 thread, 10-22 s with 2)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _abar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def _hand_betas(T: int = 1000) -> list[float]:
    return [min(1 - _abar((i + 1) / T) / _abar(i / T), 0.999) for i in range(T)]


def _random_net(generator: torch.Generator, **kw) -> SimpleMLPAdaLN:
    net = SimpleMLPAdaLN(in_channels=4, width=32, out_channels=8, z_channels=8, depth=2, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net


# ---------------------------------------------------------------------------------------------------- schedule
def test_cosine_betas_values():
    betas = cosine_betas(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    beta0 = 1 - math.cos((0.001 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert betas[0].item() == pytest.approx(beta0, rel=1e-12)
    assert betas[0].item() == pytest.approx(4.128e-5, rel=1e-3)
    assert betas[999].item() == 0.999
    assert torch.cumprod(1 - betas, 0)[999].item() == pytest.approx(2.43e-9, rel=1e-2)
    assert bool((betas[1:] >= betas[:-1]).all())
    assert cosine_alpha_bar(0.0) == pytest.approx(_abar(0.0))


def test_space_timesteps():
    steps = space_timesteps(1000, "100")
    assert len(steps) == 100 and steps[:8] == [0, 10, 20, 30, 40, 50, 61, 71] and steps[-2:] == [989, 999]
    assert steps == [round(k * 999 / 99) for k in range(100)]
    assert space_timesteps(1000, [1000]) == list(range(1000))
    # "3,2,1" over 30 steps: sections 0..9, 10..19, 20..29 with strides 4.5, 9, (single step -> start)
    assert space_timesteps(30, "3,2,1") == [0, 4, 9, 10, 19, 20]
    # uneven split: 10 steps in 3 sections of 4, 3, 3
    assert space_timesteps(10, "2,2,2") == [0, 3, 4, 6, 7, 9]
    for bad in ("", "abc", "10,x", "-1", "0", "1001", "400,400,400"):
        with pytest.raises(ValueError, match="respacing"):
            space_timesteps(1000, bad)


def test_respaced_betas_keep_alpha_bar():
    betas = cosine_betas(1000)
    kept = space_timesteps(1000, "30,20,10")
    new_betas, tmap = respaced_betas(betas, kept)
    assert tmap.tolist() == kept and new_betas.dtype == torch.float64
    ac = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(torch.cumprod(1 - new_betas, 0), ac[tmap], rtol=1e-9, atol=0)  # ᾱ_999 ~ 2e-9
    assert new_betas[0].item() == pytest.approx(betas[0].item(), rel=1e-12)


def test_posterior_tables_by_hand():
    d = GaussianDiffusion(cosine_betas(1000))
    b = _hand_betas()
    ab = [1.0]
    for beta in b:
        ab.append(ab[-1] * (1 - beta))  # ab[t+1] = ᾱ_t, ab[0] = ᾱ_{-1} = 1
    for t in (1, 500, 999):
        var = b[t] * (1 - ab[t]) / (1 - ab[t + 1])
        c1 = b[t] * math.sqrt(ab[t]) / (1 - ab[t + 1])
        c2 = (1 - ab[t]) * math.sqrt(1 - b[t]) / (1 - ab[t + 1])
        assert d.posterior_variance[t].item() == pytest.approx(var, rel=1e-9)
        assert d.posterior_mean_coef1[t].item() == pytest.approx(c1, rel=1e-9)
        assert d.posterior_mean_coef2[t].item() == pytest.approx(c2, rel=1e-9)
    assert d.posterior_variance[0].item() == 0.0
    var1 = b[1] * (1 - ab[1]) / (1 - ab[2])
    assert d.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(var1), rel=1e-9)
    assert d.posterior_log_variance_clipped[1].item() == pytest.approx(math.log(var1), rel=1e-9)
    # float32 gather equals the float64 table cast to float32
    t = torch.tensor([0, 7, 999])
    got = d._gather("posterior_mean_coef2", t, 2)
    assert got.dtype == torch.float32 and got.shape == (3, 1)
    assert torch.equal(got[:, 0], d.posterior_mean_coef2[t].float())


def test_discretized_nll_by_hand():
    def cdf(x):
        return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = torch.tensor([0.3, -1.0, 1.0])
    mean, log_scale = 0.2, math.log(0.5)
    got = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    s = 0.5
    mid = math.log(cdf((0.1 + 1 / 255) / s) - cdf((0.1 - 1 / 255) / s))
    low = math.log(cdf((-1.2 + 1 / 255) / s))
    high = math.log(1 - cdf((0.8 - 1 / 255) / s))
    torch.testing.assert_close(got, torch.tensor([mid, low, high]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- MLP
def test_timestep_embedding_cos_first():
    emb = timestep_embedding(torch.tensor([0, 3]), 256)
    assert emb.shape == (2, 256) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    f = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * f), torch.sin(3 * f)]))


def test_zero_init_outputs_zero(generator):
    net = SimpleMLPAdaLN(4, 32, 8, 8, 2)
    net.initialize_weights(generator)
    out = net(torch.randn(5, 4), torch.tensor([0, 1, 10, 500, 999]), torch.randn(5, 8))
    assert out.shape == (5, 8) and torch.equal(out, torch.zeros(5, 8))
    w = net.time_embed.mlp[0].weight
    assert 0.015 < w.std().item() < 0.025


def test_forward_with_cfg(generator):
    net = _random_net(generator)
    x = torch.randn(6, 4, generator=generator)
    t = torch.tensor([5, 60, 999] * 2)
    c = torch.randn(6, 8, generator=generator)
    xx = torch.cat([x[:3], x[:3]])
    plain = net(xx, t, c)  # unguided branches on [x_half, x_half]
    # cfg 1: the first half equals the plain forward; the second half gets the (guided = conditional) ε
    one = net.forward_with_cfg(x, t, c, 1.0)
    torch.testing.assert_close(one[:3], plain[:3])
    torch.testing.assert_close(one[3:], torch.cat([plain[:3, :4], plain[3:, 4:]], dim=1))
    s = 3.5
    out = net.forward_with_cfg(x, t, c, s)
    guided = plain[3:, :4] + s * (plain[:3, :4] - plain[3:, :4])
    torch.testing.assert_close(out[:3, :4], guided)
    torch.testing.assert_close(out[3:, :4], guided)
    torch.testing.assert_close(out[:, 4:], plain[:, 4:])  # each half keeps its own v


def test_dtype_and_checkpointing(generator):
    ref = _random_net(generator).train()
    net = SimpleMLPAdaLN(4, 32, 8, 8, 2, grad_checkpointing=True).train()
    net.load_state_dict(ref.state_dict())
    x, t, c = torch.randn(4, 4), torch.tensor([1, 2, 3, 4]), torch.randn(4, 8)
    out, out_ref = net(x, t, c), ref(x, t, c)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(net.input_proj.weight.grad, ref.input_proj.weight.grad)
    assert net.to(torch.bfloat16)(x.double(), t, c).dtype == torch.bfloat16  # inputs cast to the weight dtype


# ---------------------------------------------------------------------------------------------------- loss
def test_vb_gradient_only_reaches_variance_channels(generator):
    d = GaussianDiffusion.cosine(1000)
    x0 = torch.randn(6, 4, generator=generator)
    noise = torch.randn(6, 4, generator=generator)
    t = torch.tensor([0, 1, 2, 100, 500, 999])
    out = torch.randn(6, 8, generator=generator, requires_grad=True)
    terms = d.training_losses(lambda x_t, ts: out, x0, t, noise)
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (6,)
    (g_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.equal(g_vb[:, :4], torch.zeros(6, 4)) and g_vb[:, 4:].abs().sum() > 0
    (g_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert torch.equal(g_mse[:, 4:], torch.zeros(6, 4))
    torch.testing.assert_close(terms["mse"], ((noise - out[:, :4]) ** 2).mean(1).detach())


def test_vb_is_zero_for_the_true_posterior(generator):
    d = GaussianDiffusion.cosine(1000)
    x0 = torch.randn(4, 4, generator=generator)
    noise = torch.randn(4, 4, generator=generator)
    t = torch.tensor([1, 50, 400, 998])
    seen = {}

    def model(x_t, ts):
        seen["t"] = ts
        return torch.cat([noise, -torch.ones_like(noise)], dim=1)  # exact ε, v = −1 -> σ² = β̃ (clipped)

    terms = d.training_losses(model, x0, t, noise)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(terms["vb"], torch.zeros(4), atol=2e-3, rtol=0)
    assert torch.equal(terms["mse"], torch.zeros(4))


def test_diffloss_mask_and_overfit():
    torch.manual_seed(0)
    model = DiffLoss(DiffLossConfig(**TINY, num_sampling_steps="5"))
    model.initialize_weights(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    target = torch.randn(8, 4, generator=g).repeat(8, 1)  # (64, 4): 8 tokens, 8 copies each
    z = torch.randn(8, 8, generator=g).repeat(8, 1)
    mask = torch.ones(64)
    mask[::2] = 0
    # the masked mean equals the plain mean of the kept rows (same t and noise draws)
    full = model.train_diffusion
    gm = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (64,), generator=gm)
    noise = torch.randn(64, 4, generator=gm)
    rows = full.training_losses(lambda x_t, ts: model.net(x_t, ts, z), target, t, noise)["loss"]
    masked = model(target, z, mask, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(masked, rows[1::2].mean())

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(target, z, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)


# ---------------------------------------------------------------------------------------------------- sampling
def _random_diffloss(seed: int = 0, **cfg) -> DiffLoss:
    model = DiffLoss(DiffLossConfig(**TINY, **cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_sampling_seeds():
    model = _random_diffloss(num_sampling_steps="10")
    z = torch.randn(6, 8)
    a = model.sample(z, generator=torch.Generator().manual_seed(0))
    b = model.sample(z, generator=torch.Generator().manual_seed(0))
    c = model.sample(z, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 4) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert model.sample(z, cfg=2.0, generator=torch.Generator().manual_seed(0)).shape == (3, 4)
    assert model.sample(z, num_steps="3,2", generator=torch.Generator().manual_seed(0)).shape == (6, 4)
    assert set(model._sampling_diffusions) == {"10", "3,2"}


def test_temperature_zero_ignores_step_noise():
    model = _random_diffloss(num_sampling_steps="8")
    d = model.sampling_diffusion()
    z = torch.randn(4, 8)
    noise = torch.randn(4, 4)

    def fn(x, t):
        return model.net(x, t, z)

    a = d.p_sample_loop(fn, noise, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = d.p_sample_loop(fn, noise, temperature=0.0, generator=torch.Generator().manual_seed(1))
    c = d.p_sample_loop(fn, noise, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_with_equal_conditions_matches_unguided():
    model = _random_diffloss(num_sampling_steps="6")
    zc = torch.randn(3, 8)
    guided = model.sample(torch.cat([zc, zc]), cfg=4.0, generator=torch.Generator().manual_seed(3))
    plain = model.sample(zc, cfg=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


def test_zero_net_sampler_against_hand_recursion():
    model = DiffLoss(DiffLossConfig(**TINY, num_sampling_steps="4"))  # zero final layer -> ε̂ = 0, v = 0
    calls = []
    orig_forward = model.net.forward

    def spy(x, t, c):
        calls.append(t.tolist())
        return orig_forward(x, t, c)

    model.net.forward = spy
    z = torch.randn(3, 8)
    got = model.sample(z, temperature=0.7, generator=torch.Generator().manual_seed(11))
    kept = [0, 333, 666, 999]
    assert [c[0] for c in calls] == kept[::-1] and all(len(set(c)) == 1 for c in calls)

    b = _hand_betas()
    ab_full = [1.0]
    for beta in b:
        ab_full.append(ab_full[-1] * (1 - beta))
    ab = [ab_full[t + 1] for t in kept]  # ᾱ of the respaced chain
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, generator=g).double()
    for j in reversed(range(4)):
        ab_prev = ab[j - 1] if j > 0 else 1.0
        beta = 1 - ab[j] / ab_prev
        var = [beta * (1 - (ab[i - 1] if i > 0 else 1.0)) / (1 - ab[i]) for i in range(4)]
        var_i = [1 - ab[i] / (ab[i - 1] if i > 0 else 1.0) for i in range(4)]
        log_var_clipped = math.log(var[1] if j == 0 else var[j])
        log_var = 0.5 * math.log(var_i[j]) + 0.5 * log_var_clipped  # f = (0 + 1)/2
        x0_hat = math.sqrt(1 / ab[j]) * x  # ε̂ = 0
        c1 = beta * math.sqrt(ab_prev) / (1 - ab[j])
        c2 = (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab[j])
        mean = c1 * x0_hat + c2 * x
        x = mean + math.exp(0.5 * log_var) * torch.randn(3, 4, generator=g).double() * 0.7 if j > 0 else mean
    torch.testing.assert_close(got.double(), x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(
    "variant, dims, count",
    [("harmon_0.5b", (768, 1024, 6), 35_749_920), ("harmon_1.5b", (1280, 1536, 12), 151_206_944)],
)
def test_official_layout(variant, dims, count):
    if not KEYS_JSON.exists():
        pytest.skip("official key list not available")
    official = json.loads(KEYS_JSON.read_text())[variant]
    prefix = "mar.diffloss."
    expected = {k[len(prefix) :]: tuple(v) for k, v in official.items() if k.startswith(prefix)}
    z, width, depth = dims
    with torch.device("meta"):
        model = DiffLoss(DiffLossConfig(z_channels=z, width=width, depth=depth))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == count


def test_config_validation_and_roundtrip():
    cfg = DiffLossConfig(num_sampling_steps="30,20,10")
    assert DiffLossConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(width=0), dict(depth=1.5), dict(num_sampling_steps="2000"), dict(num_sampling_steps=100)):
        with pytest.raises(ValueError):
            DiffLossConfig(**bad)
    with pytest.raises(ValueError, match="bogus"):
        DiffLossConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "cfg,chunk_elements,pack", [(1.0, None, True), (3.0, None, True), (3.0, 3 * 8 * 32 * 8, True), (3.0, None, False)]
)
def test_fast_sampler_matches_straightforward_path(cfg, chunk_elements, pack, monkeypatch):
    """The fast sampler precomputes the adaLN modulations of many steps at once; with a small chunk budget
    (3 steps of 8 rows × (3·2 + 2)·32 values, over a 20-step chain) the chunk boundaries are crossed too. On CPU
    it runs the layers with packed weights (harmon.accel.linear), or plainly with packing off."""
    from harmon.accel import head as fast_head
    from harmon.accel import linear as accel_linear
    from harmon.diffloss import DiffLoss, DiffLossConfig

    if chunk_elements is not None:
        monkeypatch.setattr(fast_head, "MODULATION_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(accel_linear, "ENABLED", pack)
    monkeypatch.setattr(accel_linear, "MIN_ELEMENTS", 0)  # pack even this test head's small layers
    head = DiffLoss(DiffLossConfig(z_channels=24, width=32, depth=2))
    g = torch.Generator().manual_seed(0)
    head.net.initialize_weights(generator=g)
    with torch.no_grad():  # give the zero-initialised output layers weight, so outputs depend on inputs
        for p in head.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    z = torch.randn(8, 24, generator=g)
    slow = head.sample(z, cfg=cfg, generator=torch.Generator().manual_seed(1), num_steps="20")
    fast = fast_head.sample_fast(head, z, cfg=cfg, generator=torch.Generator().manual_seed(1), num_steps="20")
    # An untrained head predicts eps far from the truth, so x0 = sqrt(1/abar) x_t - ... reaches ~1e4 at t=999:
    # compare relatively (fp32 rounding of a 1-row vs N-row matmul, amplified through 20 steps).
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    assert fast.shape == ((4, 16) if cfg != 1.0 else (8, 16))
    assert all("forward" not in m.__dict__ for m in head.modules())  # the layers are plain again afterwards


def test_fast_sampler_packs_a_bf16_head_only_on_bf16_hardware_and_draws_the_same(monkeypatch):
    """In bf16 the fast sampler packs the head's layers where the CPU multiplies bf16 (harmon.accel.linear); the
    tokens are those of the plain bf16 layers (bit for bit on oneDNN, within bf16 rounding in any case)."""
    from harmon.accel import head as fast_head
    from harmon.accel import linear as accel_linear
    from harmon.cpuinfo import has_bf16_matmul
    from harmon.diffloss import DiffLoss, DiffLossConfig

    monkeypatch.setattr(accel_linear, "MIN_ELEMENTS", 0)
    head = DiffLoss(DiffLossConfig(z_channels=24, width=32, depth=2))
    g = torch.Generator().manual_seed(0)
    head.net.initialize_weights(generator=g)
    with torch.no_grad():
        for p in head.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    head = head.to(torch.bfloat16)
    z = torch.randn(8, 24, generator=g).to(torch.bfloat16)
    packed_calls = []
    original = accel_linear.PackedForward.__call__
    monkeypatch.setattr(accel_linear.PackedForward, "__call__", lambda f, x: packed_calls.append(1) or original(f, x))
    out = {}
    for pack in (True, False):
        packed_calls.clear()
        monkeypatch.setattr(accel_linear, "ENABLED", pack)
        out[pack] = fast_head.sample_fast(head, z, cfg=3.0, generator=torch.Generator().manual_seed(1), num_steps="5")
        assert bool(packed_calls) == (pack and has_bf16_matmul() and accel_linear.available())
    scale = out[False].float().abs().max().item()
    torch.testing.assert_close(out[True].float(), out[False].float(), rtol=2e-2, atol=2e-2 * scale)


# ---------------------------------------------------------------------------------------------------- v-prediction
def test_v_prediction_exact_v_gives_zero_mse_and_true_posterior(generator):
    """With the exact v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0 the mse is 0 and p(x_{t−1}|x_t) is the true posterior."""
    d = GaussianDiffusion.cosine(1000, prediction="v")
    x0 = torch.randn(4, 4, generator=generator)
    noise = torch.randn(4, 4, generator=generator)
    t = torch.tensor([1, 50, 400, 998])
    abar = torch.cumprod(1 - torch.tensor(_hand_betas(), dtype=torch.float64), 0)[t].float()[:, None]
    v_true = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    terms = d.training_losses(lambda x_t, ts: torch.cat([v_true, -torch.ones_like(noise)], dim=1), x0, t, noise)
    torch.testing.assert_close(terms["mse"], torch.zeros(4), atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["vb"], torch.zeros(4), atol=2e-3, rtol=0)
    # v̂ -> ε̂ recovers the noise, and x̂0 the clean token, at every t (up to float32 rounding of x_t)
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.epsilon_from_output(v_true, x_t, t), noise, atol=1e-4, rtol=0)
    _, _, pred_x0 = d.p_mean_variance(torch.cat([v_true, torch.zeros_like(v_true)], 1), x_t, t)
    torch.testing.assert_close(pred_x0, x0, atol=2e-3, rtol=0)


def test_v_prediction_same_sampler_as_epsilon_for_matching_nets(generator):
    """An ε-net and the v-net that outputs the same ε̂ (v = (ε̂ − sqrt(1−ᾱ)x_t)/sqrt(ᾱ)) sample the same tokens."""
    eps_d = GaussianDiffusion.cosine(1000, "10")
    v_d = GaussianDiffusion.cosine(1000, "10", prediction="v")
    w = torch.randn(4, 4, generator=generator) * 0.3

    def eps_fn(x, ts):
        return torch.cat([torch.tanh(x @ w), torch.zeros_like(x)], dim=1)

    lookup = {int(o): j for j, o in enumerate(v_d.timestep_map)}

    def v_fn(x, ts):
        j = torch.tensor([lookup[int(o)] for o in ts])
        a = v_d._gather("sqrt_alphas_cumprod", j, 2)
        b = v_d._gather("sqrt_one_minus_alphas_cumprod", j, 2)
        return torch.cat([(torch.tanh(x @ w) - b * x) / a, torch.zeros_like(x)], dim=1)

    noise = torch.randn(5, 4, generator=generator)
    a = eps_d.p_sample_loop(eps_fn, noise, generator=torch.Generator().manual_seed(3))
    b = v_d.p_sample_loop(v_fn, noise, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_prediction_validation():
    with pytest.raises(ValueError, match="prediction"):
        DiffLossConfig(**TINY, prediction="x0")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion.cosine(10, prediction="eps")
    assert DiffLossConfig().prediction == "epsilon"  # the official head
    assert DiffLoss(DiffLossConfig(**TINY, prediction="v")).train_diffusion.prediction == "v"
