"""The Hydra layer: reference semantics, padding, state_dict, compile, errors."""

import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hydra_ssm import Hydra

TINY = dict(d_model=16, d_state=4, d_conv=3, headdim=8, expand=2, chunk_size=4)


def make(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    m = Hydra(**{**TINY, **kw}).to(dtype)
    with torch.no_grad():  # move away from the symmetric init so every term matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        m.dt_bias.add_(1.0)
    return m


def reference_forward(m: Hydra, u: torch.Tensor) -> torch.Tensor:
    """An independent transcription of the reference layer: the causal scan as a
    per-token recurrence run on the sequence and on its flip, outputs rolled by
    one and added, plus the per-token diagonal; gated RMSNorm; out_proj."""
    b, l, _ = u.shape
    H, P, N, G, din = m.nheads, m.headdim, m.d_state, m.ngroups, m.d_inner
    zxbcdt = u @ m.in_proj.weight.T
    if m.in_proj.bias is not None:
        zxbcdt = zxbcdt + m.in_proj.bias
    z, xBC, dt = zxbcdt.split([din, din + 4 * G * N, 2 * H], dim=-1)
    dt = torch.cat([dt[..., :H], dt[..., H:].flip(1)], dim=0)  # (2b, l, H)
    dt = F.softplus(dt + m.dt_bias)
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv // 2,
                          groups=xBC.shape[-1]).transpose(1, 2))
    x, BC = xBC.split([din, 4 * G * N], dim=-1)
    xx = torch.cat([x, x.flip(1)], dim=0)
    BC = torch.cat([BC[..., :2 * G * N], BC[..., 2 * G * N:].flip(1)], dim=0)
    Bm, Cm = BC.split([G * N, G * N], dim=-1)
    A = -torch.exp(m.A_log)
    xh = xx.reshape(2 * b, l, H, P)
    Bh = Bm.reshape(2 * b, l, G, N).repeat_interleave(H // G, dim=2)
    Ch = Cm.reshape(2 * b, l, G, N).repeat_interleave(H // G, dim=2)
    state = torch.zeros(2 * b, H, P, N, dtype=u.dtype)
    if m.learnable_init_states:
        state = state + m.init_states
    ys = []
    for t in range(l):
        state = torch.exp(dt[:, t] * A)[..., None, None] * state + \
            dt[:, t, :, None, None] * xh[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, 1).reshape(2 * b, l, din)
    y = torch.roll(y, shifts=1, dims=1)
    y[:, 0] = 0
    Dt = x @ m.fc_D.weight.T + m.D
    y = y[:b] + y[b:].flip(1) + x * Dt.repeat_interleave(P, dim=-1)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight * F.silu(z)
    out = y @ m.out_proj.weight.T
    return out if m.out_proj.bias is None else out + m.out_proj.bias


@pytest.mark.parametrize("scan_impl", ["fused", "two_pass"])
@pytest.mark.parametrize("kw", [{}, {"ngroups": 2}, {"learnable_init_states": True}, {"bias": True, "d_conv": 5}])
def test_matches_reference_recurrence(scan_impl, kw):
    m = make(scan_impl=scan_impl, **kw)
    if m.learnable_init_states:
        with torch.no_grad():
            m.init_states.normal_()
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference_forward(m, u), rtol=1e-9, atol=1e-9)


def test_float32_matches_reference_to_float32_tolerance():
    m = make(dtype=torch.float32, chunk_size=8)
    u = torch.randn(2, 37, 16)
    m64 = make(dtype=torch.float64, chunk_size=8)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    torch.testing.assert_close(m(u).double(), reference_forward(m64, u.double()), rtol=1e-4, atol=1e-5)


@given(st.integers(1, 23), st.sampled_from([1, 2, 3, 5, 8]), st.sampled_from([1, 2]))
def test_materialize_gives_the_forward(length, chunk, groups):
    m = make(chunk_size=chunk, ngroups=groups)
    u = torch.randn(2, length, 16, dtype=torch.float64)
    M = m.materialize(u)
    assert M.shape == (2, m.nheads, length, length)
    z, x, *_ = m._value_stream(u, None)
    y = torch.einsum("bhij,bjhp->bihp", M, x).reshape(2, length, -1)
    torch.testing.assert_close(m(u), m.out_proj(m.norm(y, z)), rtol=1e-9, atol=1e-9)


def test_fused_and_two_pass_agree_with_gradients():
    m = make(dtype=torch.float32, chunk_size=8)
    u = torch.randn(2, 29, 16, requires_grad=True)
    outs = []
    for impl in ("fused", "two_pass"):
        m.scan_impl = impl
        m.zero_grad()
        u.grad = None
        y = m(u)
        y.pow(2).sum().backward()
        outs.append((y, u.grad.clone(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-5)
    for n in outs[0][2]:
        torch.testing.assert_close(outs[0][2][n], outs[1][2][n], rtol=1e-3, atol=1e-4, msg=n)


def test_gradients_reach_every_parameter():
    m = make(learnable_init_states=True)
    m(torch.randn(2, 9, 16, dtype=torch.float64)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_gradcheck_layer():
    m = make(d_model=8, headdim=4, d_state=2, chunk_size=3)
    u = torch.randn(1, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (u,))


# ---------------------------------------------------------------- padding
@given(st.integers(1, 14), st.integers(0, 6), st.integers(0, 6), st.sampled_from(["fused", "two_pass"]),
       st.booleans())
def test_padding_does_not_leak(length, left, right, scan_impl, init_states):
    m = make(scan_impl=scan_impl, learnable_init_states=init_states)
    if init_states:
        with torch.no_grad():
            m.init_states.normal_()
    u = torch.randn(1, length, 16, dtype=torch.float64)
    alone = m(u)
    junk = lambda n: 100 * torch.randn(1, n, 16, dtype=torch.float64)  # noqa: E731
    padded = torch.cat([junk(left), u, junk(right)], dim=1)
    mask = torch.cat([torch.zeros(1, left), torch.ones(1, length), torch.zeros(1, right)], dim=1).bool()
    out = m(padded, attention_mask=mask)
    torch.testing.assert_close(out[:, left:left + length], alone, rtol=1e-9, atol=1e-9)
    assert (out[:, :left] == 0).all() and (out[:, left + length:] == 0).all()
    M = m.materialize(padded, attention_mask=mask)
    torch.testing.assert_close(M[..., left:left + length, left:left + length], m.materialize(u))


def test_padding_in_a_mixed_batch():
    m = make(dtype=torch.float32)
    a, b = torch.randn(1, 9, 16), torch.randn(1, 5, 16)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, 16), b], 1)])  # second row left-padded
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    out = m(batch, attention_mask=mask)
    torch.testing.assert_close(out[0:1], m(a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1:2, 4:], m(b), rtol=1e-5, atol=1e-6)


def test_without_mask_padding_does_change_outputs():
    """Guards the padding tests: junk that is not masked must leak."""
    m = make()
    u = torch.randn(1, 6, 16, dtype=torch.float64)
    padded = torch.cat([u, torch.randn(1, 3, 16, dtype=torch.float64)], 1)
    assert not torch.allclose(m(padded)[:, :6], m(u))


# ---------------------------------------------------------------- state_dict, compile, long input
def test_state_dict_round_trip_and_reference_layout():
    m = make(learnable_init_states=True)
    expected = {"in_proj.weight": (2 * 32 + 4 * 4 + 2 * 4, 16), "conv1d.weight": (32 + 16, 1, 3),
                "conv1d.bias": (48,), "init_states": (4, 8, 4), "dt_bias": (4,), "A_log": (4,), "D": (4,),
                "fc_D.weight": (4, 32), "norm.weight": (32,), "out_proj.weight": (16, 32)}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = Hydra(**TINY, learnable_init_states=True).double()
    m2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    u = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(m2(u), m(u), rtol=0, atol=0)


def test_torch_compile_matches_eager():
    m = make(dtype=torch.float32, chunk_size=4)
    u = torch.randn(2, 10, 16)
    compiled = torch.compile(m)
    torch.testing.assert_close(compiled(u), m(u), rtol=1e-4, atol=1e-5)


def test_million_tokens_forward_is_finite():
    m = Hydra(d_model=4, d_state=2, d_conv=3, headdim=4, expand=1, chunk_size=256)
    with torch.no_grad():
        out = m(torch.randn(1, 1 << 20, 4))
    assert out.shape == (1, 1 << 20, 4) and torch.isfinite(out).all()


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad, match", [
    (lambda: torch.randn(16), "got a 1-D tensor"),
    (lambda: torch.randn(2, 5, 15), "expected d_model=16"),
    (lambda: torch.randn(2, 0, 16), "at least one position"),
    (lambda: torch.tensor([[[float("nan")] * 16]]), "NaN or infinite"),
    (lambda: torch.ones(1, 3, 16, dtype=torch.long), "floating-point"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        make(dtype=torch.float32)(bad())


@pytest.mark.parametrize("mask, match", [
    (torch.ones(2, 4), r"attention_mask must have shape \(batch, seqlen\)"),
    (torch.full((2, 5), 0.5), "only 0 and 1"),
    (torch.tensor([[1, 0, 1, 1, 1]] * 2), "contiguous"),
    ([[1] * 5] * 2, "torch.Tensor"),
])
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        make(dtype=torch.float32)(torch.randn(2, 5, 16), attention_mask=mask)


@pytest.mark.parametrize("kw, match", [
    ({"headdim": 7}, "must be divisible by headdim"),
    ({"ngroups": 3}, "divisible by ngroups"),
    ({"d_conv": 4}, "d_conv must be odd"),
    ({"activation": "relu"}, "activation"),
    ({"scan_impl": "magic"}, "scan_impl"),
    ({"d_state": 0}, "d_state must be a positive integer"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Hydra(**{**TINY, **kw})


@pytest.mark.parametrize("gated", [True, False])
def test_gated_rms_norm_matches_autograd_reference(gated):
    from hydra_ssm.mixers.norm import GatedRMSNorm, gated_rms_norm_ref

    norm = GatedRMSNorm(12).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True) if gated else None
    inputs = (x, norm.weight) if z is None else (x, z, norm.weight)

    def fast(*a):
        return GatedRMSNorm.forward(norm, a[0], None if z is None else a[1])

    assert torch.autograd.gradcheck(fast, inputs)
    weight = torch.randn(3, 5, 12, dtype=torch.float64)
    grads = [torch.autograd.grad((f(x, z) * weight).sum(), inputs)
             for f in (norm, lambda a, b: gated_rms_norm_ref(a, b, norm.weight, norm.eps))]
    torch.testing.assert_close(norm(x, z), gated_rms_norm_ref(x, z, norm.weight, norm.eps))
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref)


@given(batch=st.integers(0, 3), length=st.integers(1, 12), channels=st.integers(1, 6),
       half_width=st.integers(0, 3), bias=st.booleans(), offset=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_conv_silu_matches_the_modules_with_gradients(batch, length, channels, half_width, bias, offset, seed):
    """The recomputing conv + SiLU against ``silu(conv1d(x))`` written with the modules, on a channels-last view
    of a wider tensor (as Hydra's in_proj output): outputs and the gradients of x, weight and bias."""
    from hydra_ssm.mixers.common import conv_silu

    gen = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv1d(channels, channels, 2 * half_width + 1, groups=channels, padding=half_width,
                           bias=bias).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    wide = torch.randn(batch, length, channels + 2 * offset + 1, generator=gen, dtype=torch.float64,
                       requires_grad=True)
    x = wide[..., offset:offset + channels]
    out = conv_silu(x, conv)
    ref = F.silu(conv(x.transpose(1, 2))).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    weight = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    leaves = [wide, *conv.parameters()]
    for got, want in zip(torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True),
                         torch.autograd.grad((ref * weight).sum(), leaves, allow_unused=True)):
        torch.testing.assert_close(got, want)


def test_conv_silu_keeps_no_activation_for_backward():
    """What the recomputing conv + SiLU saves: its input's (B, C, L) copy and the parameters, nothing of the size
    of its output besides."""
    from hydra_ssm.mixers.common import conv_silu

    conv = torch.nn.Conv1d(8, 8, 7, groups=8, padding=3)
    x = torch.randn(2, 50, 8, requires_grad=True)
    out = conv_silu(x, conv)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    assert sum(t.numel() for t in saved) == x.numel() + sum(p.numel() for p in conv.parameters())
    with torch.no_grad():  # no graph: the plain modules
        torch.testing.assert_close(conv_silu(x, conv), F.silu(conv(x.transpose(1, 2))).transpose(1, 2))
