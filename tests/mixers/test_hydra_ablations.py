"""Hydra's design ablations (shift, per_token_diagonal, combine, shared_bc) against explicit float64 matrices."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hydra_ssm import Hydra
from hydra_ssm.ops import semiseparable_matrix
from test_hydra import TINY, make  # the tiny layer, moved away from its symmetric init
DEFAULTS = dict(shift=True, per_token_diagonal=True, combine="add", shared_bc=False)
VARIANTS = [
    {},
    dict(shift=False),
    dict(per_token_diagonal=False),
    dict(combine="concat"),
    dict(shared_bc=True),
    dict(shift=False, combine="concat"),
    dict(shift=False, per_token_diagonal=False, combine="concat", shared_bc=True),
]
TWO_SCANS = [dict(shift=False), dict(combine="concat"), dict(shift=False, combine="concat")]
# today's parameters of the default layer, in order
DEFAULT_KEYS = ["dt_bias", "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "fc_D.weight",
                "norm.weight", "out_proj.weight"]


def reference_forward(m: Hydra, u: torch.Tensor) -> torch.Tensor:
    """The variant transcribed with explicit float64 matrices: its own in_proj split and conv, the two
    causal (Mamba-2) matrices with their diagonals, shift matrices, the join, the gated RMSNorm and
    out_proj. u (B, L, d_model) -> (B, L, d_model); no mask, no initial states."""
    b, l, _ = u.shape
    H, P, G, N, din = m.nheads, m.headdim, m.ngroups, m.d_state, m.d_inner
    n_bc = 2 if m.shared_bc else 4
    z, xBC, dt = (u @ m.in_proj.weight.T).split([din, din + n_bc * G * N, 2 * H], dim=-1)
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv // 2,
                          groups=xBC.shape[-1]).transpose(1, 2))
    x, *bc = xBC.split([din] + [G * N] * n_bc, dim=-1)
    B_f, C_f, B_b, C_b = (t.reshape(b, l, G, N) for t in (bc * 2 if m.shared_bc else bc))
    dt = F.softplus(dt + m.dt_bias.repeat(2))
    dt_f, dt_b = dt[..., :H], dt[..., H:]
    A = -torch.exp(m.A_log)
    M_f = semiseparable_matrix(dt_f, A, B_f, C_f)  # (b, H, l, l), lower triangle and diagonal
    M_b = semiseparable_matrix(dt_b.flip(1), A, B_b.flip(1), C_b.flip(1)).flip(-1).flip(-2)  # upper and diagonal
    if m.shift:
        S = torch.diag(torch.ones(l - 1, dtype=u.dtype), -1)  # (S y)[i] = y[i - 1]
        M_f, M_b = S @ M_f, S.T @ M_b
    xh = x.reshape(b, l, H, P)
    y_f = torch.einsum("bhij,bjhp->bihp", M_f, xh).reshape(b, l, din)
    y_b = torch.einsum("bhij,bjhp->bihp", M_b, xh).reshape(b, l, din)
    y = y_f + y_b if m.combine == "add" else torch.cat([y_f, y_b], -1) @ m.combine_proj.weight.T
    diag = m.D if m.fc_D is None else x @ m.fc_D.weight.T + m.D  # (H,) or (b, l, H)
    y = y + x * diag.repeat_interleave(P, dim=-1)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight * F.silu(z)
    return y @ m.out_proj.weight.T


def variant_id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


# ---------------------------------------------------------------- outputs and gradients
@pytest.mark.parametrize("kw", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("length", [1, 7, 8])
def test_forward_equals_explicit_matrices(kw, length):
    m = make(**kw)
    u = torch.randn(2, length, 16, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference_forward(m, u), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", VARIANTS, ids=variant_id)
def test_every_parameter_gradient_equals_the_reference(kw):
    m = make(**kw)
    u = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 7, 16, dtype=torch.float64)
    params = list(m.parameters())
    got = torch.autograd.grad((m(u) * w).sum(), [u, *params])
    want = torch.autograd.grad((reference_forward(m, u) * w).sum(), [u, *params])
    for (name, _), g, r in zip([("u", u), *m.named_parameters()], got, want):
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("kw", TWO_SCANS, ids=variant_id)
def test_gradcheck_two_scan_variants(kw):
    m = make(**{**kw, "d_model": 8, "headdim": 4, "d_state": 2, "chunk_size": 3})
    u = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (u,))


@pytest.mark.parametrize("kw", [k for k in VARIANTS if k.get("combine") != "concat"], ids=variant_id)
@pytest.mark.parametrize("length", [1, 6])
def test_materialize_is_the_variants_matrix(kw, length):
    """y = M x before the norm: the layer's materialize reproduces its value stream's mixing."""
    m = make(**kw)
    u = torch.randn(2, length, 16, dtype=torch.float64)
    M = m.materialize(u)
    _, x, B_f, C_f, B_b, C_b, dt_f, dt_b = m._value_stream(u, None)
    y = m._two_scan_mix(x, dt_f, dt_b, B_f, C_f, B_b, C_b, None)  # the two-scan path, for every variant here
    torch.testing.assert_close(torch.einsum("bhij,bjhp->bihp", M, x), y, rtol=1e-10, atol=1e-10)
    if not m.shift:  # the diagonal holds both causal diagonals besides D
        assert not torch.allclose(torch.diagonal(M, dim1=-2, dim2=-1), m._diag(x).transpose(1, 2).expand_as(
            torch.diagonal(M, dim1=-2, dim2=-1)))


def test_materialize_refuses_concat():
    m = make(combine="concat")
    with pytest.raises(ValueError, match="combine='concat'"):
        m.materialize(torch.randn(1, 4, 16, dtype=torch.float64))


@pytest.mark.parametrize("kw", TWO_SCANS, ids=variant_id)
def test_empty_batch(kw):
    m = make(**kw)
    u = torch.randn(0, 5, 16, dtype=torch.float64, requires_grad=True)
    out = m(u)
    assert out.shape == (0, 5, 16)
    out.sum().backward()


# ---------------------------------------------------------------- defaults unchanged
def test_defaults_are_todays_layer():
    torch.manual_seed(3)
    plain = Hydra(**TINY)
    torch.manual_seed(3)
    explicit = Hydra(**TINY, **DEFAULTS)
    assert list(plain.state_dict()) == DEFAULT_KEYS == list(explicit.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key
    assert plain.in_proj.weight.shape == (2 * 32 + 4 * 4 + 2 * 4, 16)
    u = torch.randn(2, 9, 16)
    assert torch.equal(plain(u), explicit(u))
    assert not plain.two_scans and plain.can_stream and plain.context_parallel


def test_parameters_follow_the_options():
    assert "fc_D.weight" not in make(per_token_diagonal=False).state_dict()
    concat = make(combine="concat")
    assert concat.combine_proj.weight.shape == (32, 64) and concat.combine_proj.bias is None
    assert not hasattr(make(), "combine_proj")
    shared = make(shared_bc=True)
    assert shared.in_proj.weight.shape == (2 * 32 + 2 * 4 + 2 * 4, 16) and shared.conv1d.weight.shape[0] == 32 + 8
    # the other parameters draw the default layer's initial values
    torch.manual_seed(5)
    default = Hydra(**TINY).state_dict()
    torch.manual_seed(5)
    variant = Hydra(**TINY, combine="concat", shift=False).state_dict()
    assert all(torch.equal(default[k], variant[k]) for k in default)


@pytest.mark.parametrize("kw, match", [
    (dict(combine="sum"), r"combine must be one of \['add', 'concat'\], got 'sum'"),
    (dict(combine=None), "combine must be one of"),
    (dict(shift="no"), "shift must be True or False"),
    (dict(per_token_diagonal=1), "per_token_diagonal must be True or False"),
    (dict(shared_bc=None), "shared_bc must be True or False"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        Hydra(**TINY, **kw)


# ---------------------------------------------------------------- masks, packed rows, refusals
@given(st.sampled_from(VARIANTS[1:]), st.integers(1, 9), st.integers(0, 4), st.integers(0, 4), st.booleans())
def test_padding_does_not_leak(kw, length, left, right, init_states):
    m = make(**kw, learnable_init_states=init_states)
    if init_states:
        with torch.no_grad():
            m.init_states.normal_()
    u = torch.randn(1, length, 16, dtype=torch.float64)
    junk = lambda n: 100 * torch.randn(1, n, 16, dtype=torch.float64)  # noqa: E731
    padded = torch.cat([junk(left), u, junk(right)], dim=1)
    mask = torch.cat([torch.zeros(1, left), torch.ones(1, length), torch.zeros(1, right)], dim=1).bool()
    out = m(padded, attention_mask=mask)
    torch.testing.assert_close(out[:, left:left + length], m(u), rtol=1e-9, atol=1e-9)
    assert (out[:, :left] == 0).all() and (out[:, left + length:] == 0).all()
    if kw.get("combine") != "concat":
        M = m.materialize(padded, attention_mask=mask)
        torch.testing.assert_close(M[..., left:left + length, left:left + length], m.materialize(u))


@pytest.mark.parametrize("kw", [dict(shift=False), dict(combine="concat"), dict(per_token_diagonal=False),
                                dict(shared_bc=True)], ids=variant_id)
def test_packed_row_mixes_each_sequence_alone(kw):
    m = make(**kw)
    seqs = [torch.randn(1, n, 16, dtype=torch.float64) for n in (3, 6, 1)]
    offsets = torch.tensor([0, 3, 9, 10])
    out = m.forward_packed(torch.cat(seqs, 1), offsets)
    torch.testing.assert_close(out, torch.cat([m(s) for s in seqs], 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(per_token_diagonal=False), dict(shared_bc=True)], ids=variant_id)
def test_fast_path_variants_stream_and_agree_across_scans(kw):
    m = make(**kw)
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    want = reference_forward(m, u)
    torch.testing.assert_close(m.stream(u, 4), want, rtol=1e-10, atol=1e-10)
    for scan_impl in ("two_pass", "minimal"):
        m.scan_impl = scan_impl
        torch.testing.assert_close(m(u), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", TWO_SCANS, ids=variant_id)
def test_two_scan_variants_refuse_segments(kw):
    m = make(**kw)
    u = torch.randn(1, 6, 16, dtype=torch.float64)
    assert not m.can_stream and not m.context_parallel
    with pytest.raises(ValueError, match="stream is not supported with shift="):
        m.stream(u, 2)
    with pytest.raises(ValueError, match="segment"):
        m.segment(u, 0, 0)
    with pytest.raises(ValueError, match="context_parallel_group is not supported"):
        m(u, context_parallel_group=object())
    with pytest.raises(ValueError, match="export"):
        torch.jit.trace(m, (u,))


def test_two_scan_path_reads_initial_states_as_hydras_scan():
    """With shift and add, the two-scan path is the default layer: learned initial states included."""
    m = make(learnable_init_states=True)
    with torch.no_grad():
        m.init_states.normal_()
    u = torch.randn(2, 7, 16, dtype=torch.float64)
    z, x, B_f, C_f, B_b, C_b, dt_f, dt_b = m._value_stream(u, None)
    y = m._two_scan_mix(x, dt_f, dt_b, B_f, C_f, B_b, C_b, m.init_states)
    without = m._two_scan_mix(x, dt_f, dt_b, B_f, C_f, B_b, C_b, None)
    torch.testing.assert_close(m(u), m._output(y, z), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y, without)
