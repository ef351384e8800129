"""Packed-weight Linear layers (harmon.accel.linear): same numbers as the plain layers, used only where they apply,
and gone after the context."""

import pytest
import torch
from torch import nn

from harmon.accel import linear as accel_linear
from harmon.accel.linear import packed_linears
from harmon.cpuinfo import has_bf16_matmul

needs_onednn = pytest.mark.skipif(not accel_linear.available(), reason="torch built without the oneDNN linear ops")


def _net(generator: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(24, 40), nn.SiLU(), nn.Linear(40, 8, bias=False))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return net


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (24,)])
def test_packed_layers_match_plain_ones(shape):
    g = torch.Generator().manual_seed(0)
    net = _net(g)
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        plain = net(x)
        with packed_linears(net, min_elements=0):
            packed = net(x)
            assert all(
                isinstance(m.forward, accel_linear.PackedForward) and m.forward.packed is not None
                for m in net
                if isinstance(m, nn.Linear)
            )  # the packed path really ran
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in net)


@needs_onednn
def test_weights_changed_in_place_are_packed_again():
    g = torch.Generator().manual_seed(1)
    net = _net(g)
    x = torch.randn(3, 24, generator=g)
    with torch.no_grad(), packed_linears(net, min_elements=0):
        net(x)
        net[0].weight.mul_(2.0)
        got = net(x)
    with torch.no_grad():
        torch.testing.assert_close(got, net(x), rtol=1e-5, atol=1e-5)


def test_gradients_and_other_dtypes_take_the_plain_path():
    g = torch.Generator().manual_seed(2)
    net = _net(g)
    x = torch.randn(3, 24, generator=g)
    with packed_linears(net, min_elements=0):
        net(x).sum().backward()  # weights need gradients: plain F.linear, so autograd works
        with torch.no_grad():
            half = net.to(torch.float64)(x.double())
    assert net[0].weight.grad is not None and half.dtype == torch.float64
    assert all(getattr(m.__dict__.get("forward"), "packed", None) is None for m in net)
    with packed_linears(net, min_elements=0):  # float64 layers are not even wrapped
        assert all("forward" not in m.__dict__ for m in net)


@needs_onednn
@pytest.mark.parametrize("bf16_hardware", [True, False])
def test_bf16_layers_are_packed_only_where_asked_and_the_cpu_multiplies_bf16(monkeypatch, bf16_hardware):
    """Faked CPU flags choose whether bf16 layers are wrapped when asked; where they are (and the real CPU has the
    instructions), the packed layers give the plain bf16 layers' numbers up to bf16 rounding."""
    monkeypatch.setattr(accel_linear, "has_bf16_matmul", lambda: bf16_hardware)
    g = torch.Generator().manual_seed(3)
    net = _net(g).to(torch.bfloat16)
    x = torch.randn(6, 24, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        plain = net(x)
        with packed_linears(net, min_elements=0):  # bf16 layers are packed only when asked
            assert all("forward" not in m.__dict__ for m in net)
        with packed_linears(net, min_elements=0, bf16=True):
            wrapped = all(isinstance(m.__dict__.get("forward"), accel_linear.PackedForward) for m in (net[0], net[2]))
            assert wrapped == bf16_hardware
            if bf16_hardware and not has_bf16_matmul():
                return  # the faked flags wrap the layers; running them needs the real instructions
            packed = net(x)
            with pytest.raises(RuntimeError, match="dtype"):  # another dtype than the weights': the plain error
                net(x.float())
    assert packed.dtype == torch.bfloat16
    torch.testing.assert_close(packed.float(), plain.float(), rtol=2e-2, atol=2e-2 * plain.abs().max().item())


def test_context_restores_layers_on_error_and_nests():
    net = _net(torch.Generator().manual_seed(3))
    with pytest.raises(RuntimeError, match="boom"), packed_linears(net, min_elements=0):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in net)
    with packed_linears(net, min_elements=0):
        outer = net[0].__dict__.get("forward")
        with packed_linears(net, min_elements=0):
            assert net[0].__dict__.get("forward") is outer  # the inner context leaves the outer's layers alone
        assert net[0].__dict__.get("forward") is outer
    assert "forward" not in net[0].__dict__


def test_disabled_context_changes_nothing(monkeypatch):
    monkeypatch.setattr(accel_linear, "ENABLED", False)
    net = _net(torch.Generator().manual_seed(4))
    with packed_linears(net, min_elements=0):
        assert all("forward" not in m.__dict__ for m in net)


def test_layers_below_the_size_threshold_stay_plain():
    """Small layers are not worth packing (oneDNN's fixed cost outweighs the saved re-pack): by default only
    weights of at least MIN_ELEMENTS are wrapped."""
    big, small = nn.Linear(512, 512), nn.Linear(256, 256)
    net = nn.Sequential(big, small)
    with packed_linears(net):
        wrapped = {name for name, m in net.named_children() if "forward" in m.__dict__}
    assert wrapped == ({"0"} if accel_linear.ENABLED and accel_linear.available() else set())
    assert big.weight.numel() >= accel_linear.MIN_ELEMENTS > small.weight.numel()


def test_plain_linears_unpack_inside_and_restore_the_outer_context():
    """plain_linears (used around torch.compile, which packs weights its own way) runs every layer plain inside,
    even layers an outer packed_linears context wrapped, and gives the outer context its packed layers back."""
    from harmon.accel.linear import plain_linears

    net = _net(torch.Generator().manual_seed(5))
    with packed_linears(net, min_elements=0):
        outer = {i: m.__dict__.get("forward") for i, m in enumerate(net)}
        with plain_linears(net):
            assert all("forward" not in m.__dict__ for m in net)
        assert {i: m.__dict__.get("forward") for i, m in enumerate(net)} == outer
        with plain_linears(list(net)):  # the same given a list of layers
            assert all("forward" not in m.__dict__ for m in net)
        assert {i: m.__dict__.get("forward") for i, m in enumerate(net)} == outer
    with pytest.raises(RuntimeError, match="boom"), packed_linears(net, min_elements=0), plain_linears(net):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in net)
