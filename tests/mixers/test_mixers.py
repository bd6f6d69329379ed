"""The matrix-mixer family: forward vs materialize, vs a plain transcription of
the reference layer's formulas, state_dict layout, gradients, padding, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings, strategies as st

from hydra_ssm import MatrixMixer, build_mixer
from hydra_ssm.mixers import get_mixer_class, matrix_mixer_types
from hydra_ssm.ops.reference import semiseparable_loop

D_MODEL, QK, HEADDIM, LMAX = 16, 3, 8, 12  # 4 heads


pytestmark = pytest.mark.usefixtures("one_thread")


# (type, is_data_dependent) pairs that exist, with the reference layer's extra keys and shapes
H = 2 * D_MODEL // HEADDIM
DS = H * QK
DI = 2 * D_MODEL
REF_LAYOUT = {
    ("dense", False): {"matrix_mixer.M": (H, LMAX, LMAX)},
    ("toeplitz", False): {"matrix_mixer.conv_params": (H, 2 * LMAX - 1)},
    ("toeplitz", True): {},
    ("vandermonde", False): {"matrix_mixer.dft_matrix": (LMAX, LMAX)},
    ("vandermonde", True): {},
    ("cauchy", False): {"matrix_mixer.q_matrix": (LMAX, H, QK), "matrix_mixer.k_matrix": (LMAX, H, QK)},
    ("cauchy", True): {"matrix_mixer.bias": ()},
    ("low_rank", False): {"matrix_mixer.q_matrix": (LMAX, H, QK), "matrix_mixer.k_matrix": (LMAX, H, QK)},
    ("low_rank", True): {},
    ("attention", False): {"matrix_mixer.q_matrix": (LMAX, H, QK), "matrix_mixer.k_matrix": (LMAX, H, QK)},
    ("attention", True): {},
    ("quasiseparable", False): {"matrix_mixer.BC": (LMAX, 2 * DS), "matrix_mixer.dt_bias": (H,), "matrix_mixer.A_log": (H,),
                                "matrix_mixer.D": (H,), "matrix_mixer.fc_D.weight": (H, DI)},
    ("quasiseparable", True): {"matrix_mixer.dt_bias": (H,), "matrix_mixer.A_log": (H,), "matrix_mixer.D": (H,),
                               "matrix_mixer.fc_D.weight": (H, DI)},
}
# in_proj outputs / conv channels beyond [z, v] in the reference layer
REF_EXTRA = {"toeplitz": (2 * H, 2 * H), "vandermonde": (2 * DS, 2 * DS), "cauchy": (2 * DS, 2 * DS),
             "low_rank": (2 * DS, 2 * DS), "attention": (2 * DS, 2 * DS), "quasiseparable": (2 * DS + 2 * H, 2 * DS)}
# the bidirectional recurrent classes (no reference layer): their own parameters, as docs/mixers.md lists them
RECURRENT_LAYOUT = {
    ("bi_gla", False): {"matrix_mixer.q_matrix": (LMAX, H, QK), "matrix_mixer.k_matrix": (LMAX, H, QK),
                        "matrix_mixer.gate_bias": (2, H, QK), "matrix_mixer.D": (H,), "matrix_mixer.fc_D.weight": (H, DI)},
    ("bi_gla", True): {"matrix_mixer.gate_bias": (2, H, QK), "matrix_mixer.D": (H,), "matrix_mixer.fc_D.weight": (H, DI)},
    ("bi_deltanet", True): {"matrix_mixer.D": (H,), "matrix_mixer.fc_D.weight": (H, DI)},
    ("bi_complex", False): {"matrix_mixer.BC": (LMAX, 2 * DS), "matrix_mixer.dt_bias": (H,), "matrix_mixer.A_log": (H, QK),
                            "matrix_mixer.theta": (H, QK), "matrix_mixer.C_phase": (H, QK), "matrix_mixer.D": (H,),
                            "matrix_mixer.fc_D.weight": (H, DI)},
    ("bi_complex", True): {"matrix_mixer.dt_bias": (H,), "matrix_mixer.A_log": (H, QK), "matrix_mixer.theta": (H, QK),
                           "matrix_mixer.C_phase": (H, QK), "matrix_mixer.D": (H,), "matrix_mixer.fc_D.weight": (H, DI)},
}
# their in_proj outputs / conv channels beyond [z, v]: features through the conv, then direct ones
RECURRENT_EXTRA = {"bi_gla": (4 * DS, 2 * DS), "bi_deltanet": (2 * DS + 2 * H, 2 * DS),
                   "bi_complex": (2 * DS + 2 * H, 2 * DS)}
CASES = sorted(REF_LAYOUT) + [("semiseparable", False), ("semiseparable", True)] + sorted(RECURRENT_LAYOUT)
IDS = [f"{t}-{'sam' if dd else 'di'}" for t, dd in CASES]
# options that change a class's computation: each variant runs the generic tests too
VARIANTS = [("bi_deltanet", True, {"allow_neg_eigval": True}), ("bi_deltanet", True, {"num_householder": 2}),
            ("bi_complex", True, {"transition": "signed"}), ("bi_complex", False, {"transition": "signed"})]
CASES_KW = [(t, dd, {}) for t, dd in CASES] + VARIANTS
IDS_KW = IDS + [f"{t}-{'sam' if dd else 'di'}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for t, dd, kw in VARIANTS]


def make(t, dd, **kw):
    torch.manual_seed(0)
    m = MatrixMixer(t, dd, D_MODEL, QK, max_seq_len=LMAX, headdim=HEADDIM, d_conv=3, **kw).double()
    with torch.no_grad():  # move away from the (degenerate) init values
        for name, p in m.named_parameters():
            if name.endswith(("q_bias", "k_bias")):
                p.copy_(torch.rand_like(p))
            elif name.endswith(("A_log", "D", "bias")) and "proj" not in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


def apply_matrix(m, M, u):
    z, v, _ = m._streams(u, None)
    y = torch.einsum("bhij,bjhp->bihp", M.to(v.dtype), v)
    return m.out_proj(m.norm(rearrange(y, "b l h p -> b l (h p)"), z))


# --------------------------------------------------------------- the reference formulas
def reference_forward(t, dd, sd, u):
    """The reference layer's computation written out plainly from a state_dict (float64).

    Follows the reference's formulas, with the evident intent where it is broken
    (DI attention). Toeplitz is only defined there at L = max_seq_len.
    """
    sd = {k: v.double() for k, v in sd.items()}
    b, L, _ = u.shape
    proj = u @ sd["in_proj.weight"].T
    z, rest = proj[..., :DI], proj[..., DI:]
    conv_dim = sd["conv1d.weight"].shape[0]
    xc, direct = rest[..., :conv_dim], rest[..., conv_dim:]
    xc = F.conv1d(xc.transpose(1, 2), sd["conv1d.weight"], sd["conv1d.bias"], padding=1, groups=conv_dim).transpose(1, 2)
    act = F.silu
    v = rearrange(act(xc[..., :DI]), "b l (n p) -> b l n p", n=H)
    feats = xc[..., DI:]
    pos = torch.arange(L, dtype=torch.float64)
    eye = torch.eye(L, dtype=torch.float64)
    if t == "dense":
        M = sd["matrix_mixer.M"][:, :L, :L] / math.sqrt(LMAX) + eye
    elif t == "toeplitz":
        assert L == LMAX
        if dd:
            f, r = act(feats).split([H, H], -1)
            c = torch.cat([r.transpose(1, 2)[..., 1:].flip(-1), f.transpose(1, 2)], -1)  # (B, H, 2L-1)
        else:
            c = sd["matrix_mixer.conv_params"][None].expand(b, -1, -1)
        K = 2 * LMAX - 1
        # the reference: left-pad by L-1, circular convolution of size K, keep the first L outputs
        idx = (torch.arange(L)[:, None] - torch.arange(L)[None, :] - (LMAX - 1)) % K
        M = c[..., idx] * 0.5 / math.sqrt(LMAX) + eye
    elif t == "vandermonde":
        if dd:
            q, k = (rearrange(a, "b l (n d) -> b n l d", n=H) for a in feats.split([DS, DS], -1))
            qm = torch.cos(2 * math.pi * 1e-3 * q[..., :, None, :] * pos[:, None])  # (b n t l d)
            km = torch.cos(2 * math.pi * 1e-3 * k[..., None, :, :] * pos[:, None, None])
            M = (qm - km).sum(-1) / math.sqrt(2 * LMAX * QK) + eye
        else:
            M = torch.cos(2 * math.pi * pos[:, None] * pos[None] / LMAX)[None, None] / math.sqrt(LMAX) + eye
    elif t == "cauchy":
        if dd:
            q, k = (rearrange(a, "b l (n d) -> b n l d", n=H) for a in feats.split([DS, DS], -1))
            q, k = q.exp() + sd["matrix_mixer.bias"], k.exp() + sd["matrix_mixer.bias"]
        else:
            q = sd["matrix_mixer.q_matrix"][:L].exp().transpose(0, 1)[None]
            k = sd["matrix_mixer.k_matrix"][:L].exp().transpose(0, 1)[None]
        C = (1 / (q[..., :, None, :] + k[..., None, :, :] + 1e-8)).sum(-1)
        M = C / math.sqrt(LMAX * QK) + eye
    elif t in ("low_rank", "attention"):
        if dd:
            f = act(feats) if t == "low_rank" else feats
            q, k = (rearrange(a, "b l (n d) -> b n l d", n=H) for a in f.split([DS, DS], -1))
        else:
            q = sd["matrix_mixer.q_matrix"][:L].transpose(0, 1)[None]
            k = sd["matrix_mixer.k_matrix"][:L].transpose(0, 1)[None]
        s = q @ k.transpose(-1, -2)
        M = (s / math.sqrt(LMAX * QK) if t == "low_rank" else torch.softmax(s / math.sqrt(QK), -1)) + eye
    elif t == "quasiseparable":
        bias = sd["matrix_mixer.dt_bias"]
        if dd:
            BC = act(feats)
            dt = F.softplus(direct + torch.cat([bias, bias]))
        else:
            BC = sd["matrix_mixer.BC"][:L][None].expand(b, -1, -1)
            dt = F.softplus(bias.repeat(2)).expand(b, L, -1)
        Bm, Cm = BC[..., :DS, None].transpose(-1, -2), BC[..., DS:, None].transpose(-1, -2)  # (b, l, 1, N)
        A = -torch.exp(sd["matrix_mixer.A_log"])
        y_f, _ = semiseparable_loop(v, dt[..., :H], A, Bm, Cm)
        y_b, _ = semiseparable_loop(v.flip(1), dt[..., H:].flip(1), A, Bm.flip(1), Cm.flip(1))
        shift = lambda y: torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], 1)  # noqa: E731
        Dt = rearrange(v, "b l h p -> b l (h p)") @ sd["matrix_mixer.fc_D.weight"].T + sd["matrix_mixer.D"]
        y = shift(y_f) + shift(y_b).flip(1) + v * Dt[..., None]
        y = rearrange(y, "b l h p -> b l (h p)")
        return _ref_out(sd, y, z)
    else:
        raise AssertionError(t)
    y = torch.einsum("bhij,bjhp->bihp", M.expand(b, H, L, L), v)
    return _ref_out(sd, rearrange(y, "b l h p -> b l (h p)"), z)


def _ref_out(sd, y, z):
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * sd["norm.weight"] * F.silu(z)
    return y @ sd["out_proj.weight"].T


def reference_state_dict(t, dd):
    """Random tensors under the reference layer's key names and shapes."""
    g = torch.Generator().manual_seed(1)
    extra_proj, extra_conv = REF_EXTRA.get(t, (0, 0)) if dd else (0, 0)
    shapes = {"in_proj.weight": (2 * DI + extra_proj, D_MODEL), "conv1d.weight": (DI + extra_conv, 1, 3),
              "conv1d.bias": (DI + extra_conv,), "norm.weight": (DI,), "out_proj.weight": (D_MODEL, DI)}
    shapes.update(REF_LAYOUT[(t, dd)])
    sd = {k: 0.5 * torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    if "matrix_mixer.dft_matrix" in sd:
        sd["matrix_mixer.dft_matrix"] = torch.cos(2 * math.pi * torch.outer(torch.arange(LMAX.__int__()), torch.arange(LMAX)) / LMAX).double()
    if "matrix_mixer.bias" in sd:
        sd["matrix_mixer.bias"] = torch.tensor(0.7, dtype=torch.float64)
    return sd


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("t,dd", sorted(REF_LAYOUT), ids=[f"{t}-{'sam' if dd else 'di'}" for t, dd in sorted(REF_LAYOUT)])
def test_reference_state_dict_loads_and_matches(t, dd):
    m = make(t, dd)
    sd = reference_state_dict(t, dd)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    m.load_state_dict(sd, strict=True)
    u = torch.randn(2, LMAX, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference_forward(t, dd, sd, u).to(m(u).dtype), rtol=1e-5, atol=1e-6)
    if t != "toeplitz":  # every other class is defined by the same formula for shorter inputs
        u = u[:, :7]
        torch.testing.assert_close(m(u), reference_forward(t, dd, sd, u), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,dd", sorted(RECURRENT_LAYOUT), ids=[f"{t}-{'sam' if dd else 'di'}" for t, dd in sorted(RECURRENT_LAYOUT)])
def test_recurrent_state_dict_layout(t, dd):
    """The parameters of the bidirectional recurrent classes are those docs/mixers.md lists."""
    extra_proj, extra_conv = RECURRENT_EXTRA[t] if dd else (0, 0)
    shapes = {"in_proj.weight": (2 * DI + extra_proj, D_MODEL), "conv1d.weight": (DI + extra_conv, 1, 3),
              "conv1d.bias": (DI + extra_conv,), "norm.weight": (DI,), "out_proj.weight": (D_MODEL, DI)}
    shapes.update(RECURRENT_LAYOUT[(t, dd)])
    assert {k: tuple(v.shape) for k, v in make(t, dd).state_dict().items()} == shapes


def test_state_dict_rejects_wrong_layout():
    m = make("low_rank", False)
    sd = reference_state_dict("low_rank", False)
    sd["matrix_mixer.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError):
        m.load_state_dict(sd, strict=True)
    m = make("vandermonde", False)
    sd = reference_state_dict("vandermonde", False)
    sd["matrix_mixer.dft_matrix"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="dft_matrix"):
        m.load_state_dict(sd, strict=True)
    del sd["matrix_mixer.dft_matrix"]
    with pytest.raises(RuntimeError, match="dft_matrix"):
        m.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("t,dd,kw", CASES_KW, ids=IDS_KW)
@settings(max_examples=4, deadline=None)
@given(L=st.integers(1, LMAX), batch=st.integers(1, 2), seed=st.integers(0, 100))
def test_forward_equals_materialize(t, dd, kw, L, batch, seed):
    m = make(t, dd, **kw)
    torch.manual_seed(seed)
    u = torch.randn(batch, L, D_MODEL, dtype=torch.float64)
    M = m.materialize(u)
    assert M.shape == (batch, H, L, L)
    # the gated norm runs in float32: compare the layer loosely, the mixing itself tightly
    torch.testing.assert_close(m(u), apply_matrix(m, M, u), rtol=1e-5, atol=1e-6)
    _, v, feats = m._streams(u, None)
    torch.testing.assert_close(m.mix(v, feats, None), torch.einsum("bhij,bjhp->bihp", M, v), rtol=1e-9, atol=1e-10)
    if m.causal:
        assert torch.all(M.triu(1) == 0)


@pytest.mark.parametrize("t,dd,kw", CASES_KW, ids=IDS_KW)
def test_gradients_reach_every_parameter(t, dd, kw):
    m = make(t, dd, **kw)
    u = torch.randn(2, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    m(u).square().sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("t,dd,kw", CASES_KW, ids=IDS_KW)
@settings(max_examples=3, deadline=None)
@given(n=st.integers(1, 6), left=st.integers(0, 3), right=st.integers(0, 3), seed=st.integers(0, 100))
def test_padding_invariance(t, dd, kw, n, left, right, seed):
    """Valid outputs equal the unpadded ones for left and/or right padding; padded outputs are zero."""
    m = make(t, dd, **kw)
    torch.manual_seed(seed)
    u = torch.randn(1, n, D_MODEL, dtype=torch.float64)
    junk = lambda k: 5 * torch.randn(1, k, D_MODEL, dtype=torch.float64)  # noqa: E731
    padded = torch.cat([junk(left), u, junk(right)], dim=1)
    other = torch.cat([u[:1], u[:1]], dim=1)[:, : n + left + right]
    u2 = torch.cat([padded, torch.randn_like(other) if other.shape[1] == padded.shape[1] else padded], dim=0)
    mask = torch.zeros(2, n + left + right, dtype=torch.long)
    mask[0, left: left + n] = 1
    mask[1] = 1
    out = m(u2, attention_mask=mask)
    torch.testing.assert_close(out[0, left: left + n], m(u)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], m(u2[1:])[0], rtol=1e-5, atol=1e-6)  # an unpadded row is unaffected
    assert torch.all(out[0, :left] == 0) and torch.all(out[0, left + n:] == 0)
    M = m.materialize(u2, attention_mask=mask)
    torch.testing.assert_close(M[0, :, left: left + n, left: left + n], m.materialize(u)[0], rtol=1e-5, atol=1e-6)


def test_toeplitz_sam_is_toeplitz_and_vandermonde_dft_is_cosine():
    m = make("toeplitz", True)
    M = m.materialize(torch.randn(2, 10, D_MODEL, dtype=torch.float64)) - torch.eye(10, dtype=torch.float64)
    for d in range(-9, 10):
        diag = torch.diagonal(M, offset=d, dim1=-2, dim2=-1)
        torch.testing.assert_close(diag, diag[..., :1].expand_as(diag))
    m = make("vandermonde", False)
    M = m.materialize(torch.randn(1, 5, D_MODEL, dtype=torch.float64))[0, 0] - torch.eye(5, dtype=torch.float64)
    assert abs(M[2, 3].item() - math.cos(2 * math.pi * 6 / LMAX) / math.sqrt(LMAX)) < 1e-6


def test_vandermonde_learned_frequencies_mix():
    m = make("vandermonde", False, is_dft=False)
    assert {"matrix_mixer.q_bias", "matrix_mixer.k_bias"} <= set(m.state_dict())
    M = m.materialize(torch.randn(1, 6, D_MODEL, dtype=torch.float64))
    assert (M[0, 0] - torch.diag(torch.diagonal(M[0, 0]))).abs().max() > 1e-3  # not diagonal


def test_semiseparable_matches_ops():
    from hydra_ssm.ops import semiseparable_ref

    m = make("semiseparable", True)
    u = torch.randn(1, 9, D_MODEL, dtype=torch.float64)
    z, v, feats = m._streams(u, None)
    dt, A, B, C = m._args(v, feats, None)
    y = semiseparable_ref(v, dt.double(), A.double(), B, C) + v * m.matrix_mixer.D.double()[:, None]
    torch.testing.assert_close(m.mix(v, feats, None), y)


@pytest.mark.parametrize("name", ["dense", "toeplitz", "vandermonde", "cauchy", "low_rank", "attention",
                                  "quasiseparable", "semiseparable", "bi_gla", "bi_deltanet", "bi_complex"])
def test_build_mixer_by_name(name):
    options = dict(is_data_dependent=name != "dense", max_seq_len=LMAX, headdim=HEADDIM, qk_dim=QK, d_state=99,
                   ngroups=1, is_dft=False)
    m = build_mixer(name, d_model=D_MODEL, strict=False, **options)
    assert isinstance(m, get_mixer_class(name)) and isinstance(m, MatrixMixer)
    u = torch.randn(2, 5, D_MODEL)
    assert m(u).shape == u.shape and m.materialize(u).shape == (2, H, 5, 5)
    assert name in matrix_mixer_types()
    with pytest.raises((TypeError, ValueError)):
        build_mixer(name, d_model=D_MODEL, strict=True, **options)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown matrix_mixer_type 'nope'"):
        MatrixMixer("nope", True, D_MODEL, QK, max_seq_len=LMAX)
    with pytest.raises(ValueError, match="unknown matrix_mixer_type 'hydra'"):
        MatrixMixer("hydra", True, D_MODEL, QK)
    with pytest.raises(ValueError, match="needs max_seq_len"):
        MatrixMixer("low_rank", False, D_MODEL, QK, headdim=HEADDIM)
    with pytest.raises(ValueError, match="needs max_seq_len"):
        MatrixMixer("cauchy", True, D_MODEL, QK, headdim=HEADDIM)
    with pytest.raises(ValueError, match="no data-dependent form"):
        MatrixMixer("dense", True, D_MODEL, QK, max_seq_len=LMAX, headdim=HEADDIM)
    with pytest.raises(ValueError, match="d_conv must be odd"):
        MatrixMixer("attention", True, D_MODEL, QK, headdim=HEADDIM, d_conv=4)
    with pytest.raises(ValueError, match="divisible by headdim"):
        MatrixMixer("attention", True, D_MODEL, QK, headdim=7)
    with pytest.raises(ValueError, match="unknown option"):
        MatrixMixer("attention", True, D_MODEL, QK, headdim=HEADDIM, is_dft=True)
    with pytest.raises(ValueError, match="is the 'toeplitz' mixer"):
        get_mixer_class("toeplitz")(matrix_mixer_type="cauchy", d_model=D_MODEL, max_seq_len=LMAX, headdim=HEADDIM)
    m = make("toeplitz", False)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m(torch.randn(1, LMAX + 1, D_MODEL, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_model"):
        m(torch.randn(1, 3, D_MODEL + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        m(torch.randn(1, 3, D_MODEL, dtype=torch.float64), attention_mask=torch.tensor([[1, 0, 1]]))


def test_sam_runs_beyond_max_seq_len():
    for t in ("attention", "toeplitz", "low_rank", "quasiseparable"):
        m = make(t, True)
        u = torch.randn(1, LMAX + 5, D_MODEL, dtype=torch.float64)
        torch.testing.assert_close(m(u), apply_matrix(m, m.materialize(u), u))


def test_positional_reference_signature_and_pickling():
    import copy

    m = MatrixMixer("cauchy", False, D_MODEL, QK, LMAX, 3, None, 2, HEADDIM)
    assert type(m).__name__ == "CauchyMixer" and m.max_seq_len == LMAX and m.d_conv == 3
    m2 = copy.deepcopy(m)
    u = torch.randn(1, 4, D_MODEL)
    torch.testing.assert_close(m(u), m2(u))


# --------------------------------------------------------------------------- no L x L tensors
class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the op that produced the largest tensor (by element count)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), f"{func} -> {tuple(t.shape)}"
        return out


NO_LL_CASES = [(t, dd, kw) for t, dd, kw in CASES_KW if t != "dense"] + [
    ("vandermonde", False, {"is_dft": False}),
    ("attention", False, {"headdim": 4}),  # head size == qk_dim: no padding copy in front of SDPA
    ("attention", True, {"headdim": 4}),
]


@pytest.mark.parametrize("t,dd,kw", NO_LL_CASES,
                         ids=[f"{t}-{'sam' if dd else 'di'}{'-' + '-'.join(map(str, kw.values())) if kw else ''}"
                              for t, dd, kw in NO_LL_CASES])
def test_no_L_by_L_tensor_in_forward_and_backward(t, dd, kw, monkeypatch):
    """forward + backward (materialize excluded) never produce a tensor that grows like L * L.

    The largest tensor of a pass at L = 1024 is compared with the largest at L = 512: it
    may grow linearly (x2), not quadratically (x4), and it must stay below L * L elements
    per (batch, head). The tiled classes are checked with a small block budget and the
    chunked ones with a small chunk, so that the test sees the tiling itself (blocks of
    B * H * tile * L or B * H * chunk * L elements are linear in L). The SDPA path of the
    attention class must stay fused: PyTorch's math fallback (taken e.g. for a q or k whose
    last dim is not unit-stride) builds (B, H, L, L) weights.
    """
    import hydra_ssm.ops._tiled as tiled

    monkeypatch.setattr(tiled, "BLOCK_BUDGET", 1 << 17)
    kw = dict(kw)
    headdim = kw.pop("headdim", 16)
    largest = {}
    for L in (512, 1024):
        batch = 2
        torch.manual_seed(0)
        chunk = min(64, get_mixer_class(t).default_chunk_size)  # the recurrent classes' own, smaller chunks
        m = MatrixMixer(t, dd, 32, 4, max_seq_len=L, headdim=headdim, chunk_size=chunk, **kw)
        u = torch.randn(batch, L, 32, requires_grad=True)
        mask = torch.ones(batch, L, dtype=torch.bool)
        mask[1, : L // 5] = False  # left padding in the second row
        with _LargestTensor() as rec:
            m(u, attention_mask=mask).square().sum().backward()
        assert rec.numel < batch * m.nheads * L * L, rec.op
        assert u.grad is not None and torch.isfinite(u.grad).all()
        largest[L] = rec
    assert largest[1024].numel <= 2.2 * largest[512].numel, (largest[512].op, largest[1024].op)


@pytest.mark.parametrize("t,dd,kw", [("cauchy", True, {}), ("cauchy", False, {}), ("vandermonde", True, {}),
                                     ("vandermonde", False, {"is_dft": False})],
                         ids=["cauchy-sam", "cauchy-di", "vandermonde-sam", "vandermonde-di-learned"])
def test_tiled_gradients_equal_materialized_over_many_blocks(t, dd, kw, monkeypatch):
    """Gradients of the tiled classes equal those of the explicit matrix, at a length that
    spans several row and column blocks (small block budget)."""
    import hydra_ssm.ops._tiled as tiled

    monkeypatch.setattr(tiled, "BLOCK_BUDGET", 2 * 4 * 16 * 20)  # 16-row blocks of 20 columns
    monkeypatch.setattr(tiled, "ROW_TILE", 16)
    L = 70
    torch.manual_seed(0)
    m = MatrixMixer(t, dd, D_MODEL, QK, max_seq_len=L, headdim=HEADDIM, d_conv=3, **kw).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("q_bias", "k_bias")):
                p.copy_(0.05 * torch.rand_like(p))
    u = torch.randn(2, L, D_MODEL, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, L, D_MODEL, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        m.zero_grad(set_to_none=True)
        u.grad = None
        out = m(u) if fast else apply_matrix(m, m.materialize(u), u)
        (out * w).sum().backward()
        grads.append([u.grad.clone()] + [p.grad.clone() for _, p in m.named_parameters()])
    for name, a, b in zip(["u"] + [n for n, _ in m.named_parameters()], *grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_recurrent_options_are_checked():
    with pytest.raises(ValueError, match="num_householder must be a positive integer, got 0"):
        make("bi_deltanet", True, num_householder=0)
    with pytest.raises(ValueError, match="allow_neg_eigval must be True or False, got 'yes'"):
        make("bi_deltanet", True, allow_neg_eigval="yes")
    with pytest.raises(ValueError, match="transition"):
        make("bi_complex", True, transition="rotation")
    with pytest.raises(ValueError, match="has no data-independent form"):
        make("bi_deltanet", False)


def test_negative_eigenvalues_reach_beta_above_one():
    """allow_neg_eigval doubles the range of beta: [0, 2] instead of [0, 1]; signed decays reach below 0."""
    u = 4 * torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    for neg in (False, True):
        m = make("bi_deltanet", True, allow_neg_eigval=neg)
        _, v, feats = m._streams(u, None)
        beta = torch.cat(m._args(v, feats)[2:])
        assert beta.min() >= 0 and (beta.max() > 1) == neg
    m = make("bi_complex", True, transition="signed")
    with torch.no_grad():
        m.matrix_mixer.dt_bias.fill_(3.0)  # steps of about 3: a = 2 exp(-3) - 1 < 0
    _, v, feats = m._streams(u, None)
    args = m._args(v, feats)
    phase = args["phase_fwd"]
    assert torch.all((phase == 0) | (phase == math.pi)) and (phase == math.pi).float().mean() > 0.5
    assert torch.all(args["log_decay_fwd"] <= 0)
    # with signs of both kinds in each direction, the real-arithmetic scan equals the explicit matrix
    for m in (make("bi_complex", True, transition="signed"), make("bi_complex", False, transition="signed")):
        with torch.no_grad():
            m.matrix_mixer.dt_bias.fill_(0.7)  # steps around log 2: a = 2 exp(-dt) - 1 changes sign
        _, v, feats = m._streams(u, None)
        args = m._args(v, feats)
        for d in ("fwd", "bwd"):
            assert 0 < (args[f"phase_{d}"] == math.pi).float().mean() < 1
        M = m.materialize(u)
        torch.testing.assert_close(m.mix(v, feats, None), torch.einsum("bhij,bjhp->bihp", M, v), rtol=1e-9, atol=1e-10)
