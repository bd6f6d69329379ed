"""Fast operators against explicit-matrix and loop references."""

from typing import NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from hydra_ssm.ops import (
    quasiseparable_chunked,
    quasiseparable_matrix,
    quasiseparable_minimal,
    quasiseparable_ref,
    quasiseparable_two_pass,
    semiseparable_chunked,
    semiseparable_loop,
    semiseparable_matrix,
    semiseparable_ref,
)

from helpers import hydra_inputs, ssm_inputs

# Every strategy reaches the edges: batch 0, L = 0 and 1, chunks of 1 and longer than L,
# dt exactly 0, 1e-30, 1e-40 and 1e-300 (at some or all positions), huge dt * |A| (decays that
# underflow to 0), A exactly 0 or near 0.
LENGTHS = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13, 16, 17, 0])
CHUNKS = st.sampled_from([1, 2, 3, 4, 5, 8, 64])
EDGE_DT = st.sampled_from([0.0, 1e-30, 1e-40, 1e-300])  # 1e-40: a float32 denormal
DT_SCALES = st.sampled_from([1.0, 1e-3, 30.0])  # drawn per direction: one may be tiny, the other huge
A_KINDS = {
    "moderate": lambda u: -(u + 0.1),
    "large": lambda u: -(5 * u + 1),  # with dt up to 30: dt * |A| up to 180 per step
    "near zero": lambda u: -1e-9 * u,
    "zero": lambda u: torch.zeros_like(u),
}


@st.composite
def shapes(draw):
    g = draw(st.sampled_from([1, 2]))
    h = g * draw(st.sampled_from([1, 2, 3]))
    return dict(b=draw(st.sampled_from([1, 2, 0])), l=draw(LENGTHS), h=h, p=draw(st.integers(1, 4)), g=g,
                n=draw(st.integers(1, 5)), q=draw(CHUNKS), seed=draw(st.integers(0, 2 ** 16)),
                dt_scales=(draw(DT_SCALES), draw(DT_SCALES)), A=draw(st.sampled_from(list(A_KINDS))),
                edge=draw(EDGE_DT), edge_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])))


def edge_dt(s, gen, scale):
    """(B, L, H) step sizes in [0, scale), a fraction of them replaced by the edge value."""
    dt = torch.rand(s["b"], s["l"], s["h"], generator=gen, dtype=torch.float64) * scale
    hit = torch.rand(dt.shape, generator=gen, dtype=torch.float64) < s["edge_fraction"]
    return dt.masked_fill(hit, s["edge"])


def scan_inputs(s, *, diag="none", requires_grad=False):
    """x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D (float64) with the edge values of ``s``."""
    gen = torch.Generator().manual_seed(s["seed"])
    b, l, h, p, g, n = (s[k] for k in "blhpgn")

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, dt_f, dt_b = rnd(b, l, h, p), edge_dt(s, gen, s["dt_scales"][0]), edge_dt(s, gen, s["dt_scales"][1])
    A = A_KINDS[s["A"]](torch.rand(h, generator=gen, dtype=torch.float64))
    B_f, C_f, B_b, C_b = (rnd(b, l, g, n) for _ in range(4))
    D = {"none": None, "head": rnd(h), "token": rnd(b, l, h)}[diag]
    out = [x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D]
    return [None if t is None else t.requires_grad_(requires_grad) for t in out]


def initial_states(s, kind, requires_grad=False):
    shape = (s["b"], s["h"], s["p"], s["n"])
    gen = torch.Generator().manual_seed(s["seed"] + 1)
    init = {"none": None, "shared": torch.randn(shape[1:], generator=gen, dtype=torch.float64),
            "pair": (torch.randn(shape, generator=gen, dtype=torch.float64),
                     torch.randn(shape, generator=gen, dtype=torch.float64))}[kind]
    if requires_grad and init is not None:
        for t in (init if isinstance(init, tuple) else (init,)):
            t.requires_grad_()
    return init


def leaves_of(*items):
    """The tensors among ``items`` (tuples of states flattened), in order."""
    out = []
    for t in items:
        out.extend(t if isinstance(t, tuple) else [] if t is None else [t])
    return out


def gradients(outputs, weights, leaves):
    """d sum(w * out) / d leaf for every leaf; a leaf the output does not depend on gets zeros."""
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


def close_scaled(a, b, tol):
    """a == b up to ``tol`` relative to the largest entry of b (values span many magnitudes at the edges)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def close(a, b, tol=1e-9):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- semiseparable
def ssd_inputs(s, requires_grad=False):
    """x, dt, A, B, C of the causal SSD (the forward direction of ``scan_inputs``)."""
    x, dt, _, A, B, C, *_ = scan_inputs(s, requires_grad=requires_grad)
    return x, dt, A, B, C


@given(shapes(), st.booleans())
def test_semiseparable_chunked_equals_matrix(s, with_state):
    x, dt, A, B, C = ssd_inputs(s)
    s0 = initial_states(s, "pair")[0] if with_state else None
    y, final = semiseparable_chunked(x, dt, A, B, C, chunk_size=s["q"], initial_states=s0, return_final_states=True)
    y_ref, final_ref = semiseparable_ref(x, dt, A, B, C, initial_states=s0, return_final_states=True)
    close(y, y_ref)
    close(final, final_ref)
    if s0 is None:  # the matrix alone, applied by hand
        M = semiseparable_matrix(dt, A, B, C)
        close(y, torch.einsum("bhij,bjhp->bihp", M, x))


@given(shapes())
def test_semiseparable_matrix_equals_loop(s):
    x, dt, A, B, C = ssd_inputs(s)
    s0 = initial_states(s, "pair")[0]
    y_loop, final_loop = semiseparable_loop(x, dt, A, B, C, initial_states=s0)
    y_ref, final_ref = semiseparable_ref(x, dt, A, B, C, initial_states=s0, return_final_states=True)
    close(y_loop, y_ref)
    close(final_loop, final_ref)


@given(shapes(), st.booleans())
def test_semiseparable_gradients_equal_reference(s, with_state):
    """Gradients of x, dt, A, B, C and the initial state, through the output and the final state."""
    x, dt, A, B, C = ssd_inputs(s, requires_grad=True)
    s0 = initial_states(s, "pair", requires_grad=True)[0] if with_state else None
    leaves = leaves_of(x, dt, A, B, C, s0)
    gen = torch.Generator().manual_seed(s["seed"] + 2)
    weights = (torch.randn(x.shape, generator=gen, dtype=torch.float64),
               torch.randn(s["b"], s["h"], s["p"], s["n"], generator=gen, dtype=torch.float64))
    ref = gradients(semiseparable_ref(x, dt, A, B, C, initial_states=s0, return_final_states=True), weights, leaves)
    fast = gradients(semiseparable_chunked(x, dt, A, B, C, chunk_size=s["q"], initial_states=s0,
                                           return_final_states=True), weights, leaves)
    assert_gradients_close(fast, ref, ["x", "dt", "A", "B", "C", "initial_states"][:len(leaves)],
                           "semiseparable_chunked")


def test_semiseparable_final_state_chains():
    """Running two halves with the carried state equals running the whole."""
    x, dt, A, B, C = ssm_inputs(2, 23, 4, 3, 2, 5)
    y, final = semiseparable_chunked(x, dt, A, B, C, chunk_size=4, return_final_states=True)
    y1, s1 = semiseparable_chunked(x[:, :10], dt[:, :10], A, B[:, :10], C[:, :10], chunk_size=4, return_final_states=True)
    y2, s2 = semiseparable_chunked(x[:, 10:], dt[:, 10:], A, B[:, 10:], C[:, 10:], chunk_size=4, initial_states=s1,
                                   return_final_states=True)
    close(torch.cat([y1, y2], 1), y)
    close(s2, final)


# ---------------------------------------------------------------- quasiseparable
DIAGS = st.sampled_from(["none", "head", "token"])
STATES = st.sampled_from(["none", "shared", "pair"])


@given(shapes(), DIAGS, STATES)
def test_quasiseparable_fast_paths_equal_matrix(s, diag, states):
    args = scan_inputs(s, diag=diag)
    init = initial_states(s, states)
    y_ref = quasiseparable_ref(*args, initial_states=init)
    close(quasiseparable_chunked(*args, chunk_size=s["q"], initial_states=init), y_ref)
    close(quasiseparable_two_pass(*args, chunk_size=s["q"], initial_states=init), y_ref)
    if init is None:
        M = quasiseparable_matrix(*args[1:])
        close(y_ref, torch.einsum("bhij,bjhp->bihp", M, args[0]))


def test_quasiseparable_matrix_structure():
    """Strictly lower part is the shifted forward SSD, strictly upper the shifted backward one, diagonal D."""
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = hydra_inputs(1, 6, 2, 1, 1, 3)
    M = quasiseparable_matrix(dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)[0, 0]
    a_f, a_b = torch.exp(dt_f[0, :, 0] * A[0]), torch.exp(dt_b[0, :, 0] * A[0])
    for i in range(6):
        for j in range(6):
            if j < i:
                want = C_f[0, i - 1, 0] @ B_f[0, j, 0] * dt_f[0, j, 0] * torch.prod(a_f[j + 1:i])
            elif j > i:
                want = C_b[0, i + 1, 0] @ B_b[0, j, 0] * dt_b[0, j, 0] * torch.prod(a_b[i + 1:j])
            else:
                want = D[0, i, 0]
            assert torch.allclose(M[i, j], want, rtol=1e-12, atol=1e-12), (i, j)


# ---------------------------------------------------------------- gradients
def test_semiseparable_gradcheck():
    x, dt, A, B, C = ssm_inputs(2, 7, 4, 2, 2, 3, requires_grad=True)
    s0 = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda *a: semiseparable_chunked(*a[:5], chunk_size=3, initial_states=a[5],
                                                      return_final_states=True), (x, dt, A, B, C, s0))


@pytest.mark.parametrize("fn", [quasiseparable_chunked, quasiseparable_two_pass])
def test_quasiseparable_gradcheck(fn):
    args = hydra_inputs(2, 7, 4, 2, 2, 3, requires_grad=True)
    s0 = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    s1 = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda *a: fn(*a[:9], chunk_size=3, initial_states=(a[9], a[10])), (*args, s0, s1))


HYDRA_ARGS = ["x", "dt_fwd", "dt_bwd", "A", "B_fwd", "C_fwd", "B_bwd", "C_bwd", "D"]


def assert_gradients_close(fast, ref, names, label):
    for name, g_fast, g_ref in zip(names, fast, ref, strict=True):
        try:
            close_scaled(g_fast, g_ref, 1e-8)
        except AssertionError as err:
            raise AssertionError(f"{label}: gradient of {name}: {err}") from None


class GradientCase(NamedTuple):
    """Hydra's inputs for a gradient comparison: the arguments, the initial states, every leaf tensor with
    its name, and the weight of the output in the loss."""

    args: list
    init: object
    leaves: list
    names: list
    weight: tuple


def gradient_case(s, diag, states) -> GradientCase:
    args = scan_inputs(s, diag=diag, requires_grad=True)
    init = initial_states(s, states, requires_grad=True)
    leaves = leaves_of(*args, init)
    names = [n for n, t in zip(HYDRA_ARGS, args) if t is not None]
    names += ["initial_states"] * (len(leaves) - len(names))
    weight = (torch.randn(args[0].shape, generator=torch.Generator().manual_seed(s["seed"] + 2),
                          dtype=torch.float64),)
    return GradientCase(args, init, leaves, names, weight)


@given(shapes(), DIAGS, STATES)
def test_quasiseparable_gradients_equal_reference(s, diag, states):
    """Gradients of every input (x, both dt, A, the four projections, D, the initial states)
    of both fast paths against autograd through the float64 explicit matrix."""
    c = gradient_case(s, diag, states)
    ref = gradients((quasiseparable_ref(*c.args, initial_states=c.init),), c.weight, c.leaves)
    for fn in (quasiseparable_chunked, quasiseparable_two_pass):
        fast = gradients((fn(*c.args, chunk_size=s["q"], initial_states=c.init),), c.weight, c.leaves)
        assert_gradients_close(fast, ref, c.names, fn.__name__)


@given(shapes(), DIAGS, STATES)
def test_quasiseparable_chunked_equals_minimal(s, diag, states):
    """The fast scan (ops/chunked.py) against the one-page chunked form (ops/minimal.py), an independent
    chunked reference (no code shared with the fast core): outputs and the gradients of every input."""
    c = gradient_case(s, diag, states)
    y_fast = quasiseparable_chunked(*c.args, chunk_size=s["q"], initial_states=c.init)
    y_min = quasiseparable_minimal(*c.args, chunk_size=s["q"], initial_states=c.init)
    close_scaled(y_fast.detach(), y_min.detach(), 1e-9)
    assert_gradients_close(gradients((y_fast,), c.weight, c.leaves), gradients((y_min,), c.weight, c.leaves),
                           c.names, "chunked against minimal")


def to_float32(t):
    if isinstance(t, tuple):
        return tuple(to_float32(u) for u in t)
    return None if t is None else t.detach().float().requires_grad_()


@given(shapes(), DIAGS, STATES)
def test_quasiseparable_float32_gradients_equal_reference(s, diag, states):
    """The same edges in float32 (1e-300 underflows to 0): the fused path's float32 log-decays
    against the float64 matrix of the same rounded inputs."""
    args = [to_float32(t) for t in scan_inputs(s, diag=diag)]
    init = to_float32(initial_states(s, states))
    leaves = leaves_of(*args, init)
    names = [n for n, t in zip(HYDRA_ARGS, args) if t is not None]
    names += ["initial_states"] * (len(leaves) - len(names))
    weight = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(s["seed"] + 2), dtype=torch.float64)
    ref = gradients((quasiseparable_ref(*args, initial_states=init).double(),), (weight,), leaves)
    fast = gradients((quasiseparable_chunked(*args, chunk_size=s["q"], initial_states=init),), (weight.float(),),
                     leaves)
    # float32 log-decays of ~-3000 (dt * |A| up to 180 per step) carry ~1e-4 into the exponent
    for name, g_fast, g_ref in zip(names, fast, ref, strict=True):
        try:
            close_scaled(g_fast, g_ref.float(), 5e-3)
        except AssertionError as err:
            raise AssertionError(f"float32: gradient of {name}: {err}") from None


@pytest.mark.parametrize("step", [0.0, 1e-30, 1e-300])
@pytest.mark.parametrize("which", ["dt_fwd", "dt_bwd"])
def test_gradient_at_a_vanishing_step_size(step, which):
    """The audit's case: L = 6, one step size 0 (or vanishingly small). d dt there is
    sum_i dM_ij CB_ij exp(r_i - k_j), not 0."""
    args = hydra_inputs(1, 6, 1, 1, 1, 2)
    args[HYDRA_ARGS.index(which)][0, 2, 0] = step
    args = [t.requires_grad_() for t in args]
    weight = (torch.randn(1, 6, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64),)
    ref = gradients((quasiseparable_ref(*args),), weight, args)
    for q in (6, 4, 2):
        fast = gradients((quasiseparable_chunked(*args, chunk_size=q),), weight, args)
        assert_gradients_close(fast, ref, HYDRA_ARGS, f"chunk_size={q}")


# ---------------------------------------------------------------- stability and dtypes
@pytest.mark.parametrize("dt_scale", [1.0, 1e3])
def test_no_overflow_with_large_decays(dt_scale):
    """Large dt*|A| underflows decays to 0; nothing becomes inf or NaN, gradients included."""
    args = hydra_inputs(1, 300, 2, 3, 1, 4, dtype=torch.float32, dt_scale=dt_scale, requires_grad=True)
    args[3].data.mul_(50.0)  # A up to -55
    y = quasiseparable_chunked(*args, chunk_size=64)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    for t in args:
        if t is not None:
            assert torch.isfinite(t.grad).all()
    y_ref = quasiseparable_ref(*[None if t is None else t.detach() for t in args])
    # float32 log-cumsums of ~-3000 carry ~1e-4 absolute error into the exponent
    torch.testing.assert_close(y.double(), y_ref.double(), rtol=2e-3, atol=2e-3 * float(y_ref.abs().max()))


def test_long_sequence_is_finite():
    """L = 2^20 in float32: cumulative decays reach about -1e5 yet stay finite."""
    l = 1 << 20
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = hydra_inputs(1, l, 1, 2, 1, 2, dtype=torch.float32, dt_scale=0.2)
    dt_f, dt_b, A = dt_f + 0.5, dt_b + 0.5, A - 1.0  # every step decays by at least e^-0.5
    y = quasiseparable_chunked(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D, chunk_size=256)
    assert torch.isfinite(y).all()
    # spot-check a window against the reference on the window alone: inputs 80 steps away weigh < e^-40
    w = slice(l // 2, l // 2 + 200)
    window = [t[:, w] if t is not None and t.dim() > 1 else t for t in (x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)]
    y_win = quasiseparable_ref(*window)
    torch.testing.assert_close(y[:, l // 2 + 80: l // 2 + 120], y_win[:, 80:120], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(dtype):
    args64 = hydra_inputs(2, 45, 4, 8, 2, 8)
    args = [t.to(dtype) for t in args64]
    y = quasiseparable_chunked(*args, chunk_size=16)
    assert y.dtype == dtype
    y32 = quasiseparable_ref(*[t.double() for t in args])  # same rounded inputs, exact arithmetic
    err = (y.double() - y32).abs().max() / y32.abs().max()
    assert err < 1e-2  # only the output rounding remains


@pytest.mark.parametrize("fn", [quasiseparable_chunked, quasiseparable_two_pass, quasiseparable_minimal])
def test_float64_initial_state_makes_the_work_float64(fn):
    """Any float64 input, the initial states included, runs the work in float64; the output keeps x's dtype."""
    args = [t.float() for t in hydra_inputs(1, 9, 2, 3, 1, 4)]
    state = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    y = fn(*args, chunk_size=4, initial_states=state)
    y64 = fn(*[t.double() for t in args], chunk_size=4, initial_states=state)
    assert y.dtype == torch.float32
    assert torch.equal(y, y64.float())


# ---------------------------------------------------------------- bad input
def test_bad_shapes_raise_clear_errors():
    x, dt, A, B, C = ssm_inputs(1, 8, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        semiseparable_chunked(x[0], dt, A, B, C)
    with pytest.raises(ValueError, match="dt must have shape"):
        semiseparable_chunked(x, dt[:, :5], A, B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        semiseparable_chunked(x, dt, A[:1], B, C)
    with pytest.raises(ValueError, match="C must have the shape"):
        semiseparable_chunked(x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match="divisible by ngroups"):
        semiseparable_chunked(x, dt, A, torch.randn(1, 8, 3, 4), torch.randn(1, 8, 3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        semiseparable_chunked(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="initial_states"):
        semiseparable_chunked(x, dt, A, B, C, initial_states=torch.zeros(2, 3))
    args = hydra_inputs(1, 8, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="D must have shape"):
        quasiseparable_chunked(*args[:8], D=torch.ones(3))
    with pytest.raises(ValueError, match="dt_bwd must have shape"):
        quasiseparable_chunked(args[0], args[1], args[2][:, :3], *args[3:])
    with pytest.raises(ValueError, match="C_fwd must have the shape of B_fwd"):
        quasiseparable_chunked(*args[:5], args[5][..., :2], *args[6:])


SCANS = {
    "quasiseparable_chunked": lambda *a: quasiseparable_chunked(*a, chunk_size=3),
    "quasiseparable_two_pass": lambda *a: quasiseparable_two_pass(*a, chunk_size=3),
    "quasiseparable_ref": quasiseparable_ref,
    "semiseparable_chunked": lambda x, dt, _dt, A, B, C, *_: semiseparable_chunked(x, dt, A, B, C, chunk_size=3),
    "semiseparable_ref": lambda x, dt, _dt, A, B, C, *_: semiseparable_ref(x, dt, A, B, C),
    "semiseparable_loop": lambda x, dt, _dt, A, B, C, *_: semiseparable_loop(x, dt, A, B, C)[0],
}


@pytest.mark.parametrize("scan", list(SCANS))
@pytest.mark.parametrize("which", ["dt_fwd", "dt_bwd"])
def test_negative_step_sizes_are_rejected_by_every_path(scan, which):
    """Every path, fast or reference, refuses dt < 0 before computing anything."""
    if scan.startswith("semi") and which == "dt_bwd":
        pytest.skip("the causal SSD has one dt")
    args = hydra_inputs(1, 8, 2, 3, 1, 4)
    args[HYDRA_ARGS.index(which)][0, 5, 1] = -0.5
    name = "dt" if scan.startswith("semi") else which
    with pytest.raises(ValueError, match=f"^{name} must be >= 0 .* -0.5"):
        SCANS[scan](*args)


@pytest.mark.parametrize("scan", list(SCANS))
@pytest.mark.parametrize("which", ["x", "dt_fwd", "A", "B_fwd", "C_fwd", "D"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_floating_inputs_are_rejected(scan, which, dtype):
    """An integer x used to give a truncated integer output; now every tensor must be floating point."""
    args = hydra_inputs(1, 8, 2, 3, 1, 4)
    i = HYDRA_ARGS.index(which)
    args[i] = args[i].to(dtype)
    if scan.startswith("semi") and which == "D":
        pytest.skip("the causal SSD has no D")
    name = which.replace("_fwd", "") if scan.startswith("semi") else which
    with pytest.raises(TypeError, match=f"^{name} must be a floating-point tensor .* got {dtype}"):
        SCANS[scan](*args)


def test_states_must_be_floating_and_on_xs_device():
    args = hydra_inputs(1, 8, 2, 3, 1, 4)
    with pytest.raises(TypeError, match=r"initial_states \(backward\) must be a floating-point"):
        quasiseparable_chunked(*args, initial_states=(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.int32)))
    # "meta" stands for any other device: the check runs before any computation
    with pytest.raises(ValueError, match="A must be on x's device cpu, got meta"):
        quasiseparable_chunked(*args[:3], args[3].to("meta"), *args[4:])
    with pytest.raises(ValueError, match="initial_states must be on x's device"):
        semiseparable_chunked(*[args[i] for i in (0, 1, 3, 4, 5)], initial_states=torch.zeros(2, 3, 4, device="meta"))


def test_mixed_floating_dtypes_are_promoted_as_documented():
    """float64 anywhere: the work is done in float64; the output has x's dtype."""
    args = hydra_inputs(2, 9, 2, 3, 1, 4)
    mixed = [args[0].float(), *args[1:3], args[3].half(), *args[4:]]  # x float32, dt float64, A float16
    y = quasiseparable_chunked(*mixed, chunk_size=4)
    assert y.dtype == torch.float32
    y_ref = quasiseparable_ref(*[t.double() for t in mixed])
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scan", list(SCANS))
def test_nan_propagates_without_a_check(scan):
    """The documented policy: the ops do not look for NaN/inf (the layers do); NaN reaches the output."""
    args = hydra_inputs(1, 8, 2, 3, 1, 4)
    args[0][0, 3, 1, 0] = float("nan")
    args[1][0, 6, 0] = float("nan")  # NaN is not a negative step size
    y = SCANS[scan](*args)
    assert y.isnan().any() and not y.isnan().all()


@pytest.mark.parametrize("batch, length", [(0, 5), (2, 0), (0, 0)])
def test_empty_inputs_give_empty_outputs_and_gradients(batch, length):
    args = hydra_inputs(batch, length, 2, 3, 1, 4, requires_grad=True)
    s0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    for fn in (quasiseparable_chunked, quasiseparable_two_pass):
        y = fn(*args, chunk_size=4, initial_states=s0)
        assert y.shape == (batch, length, 2, 3)
        grads = torch.autograd.grad(y.sum(), [*args, s0])
        assert [g.shape for g in grads] == [t.shape for t in (*args, s0)]
        assert all(not g.any() for g in grads)
    x, dt, _, A, B, C, *_ = args
    y, final = semiseparable_chunked(x, dt, A, B, C, chunk_size=4, initial_states=s0, return_final_states=True)
    assert y.shape == (batch, length, 2, 3) and final.shape == (batch, 2, 3, 4)
    close(final, s0.detach().expand(batch, -1, -1, -1))  # nothing decays over no steps
