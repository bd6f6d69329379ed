"""Fast operators against explicit-matrix and loop references."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from hydra_ssm.ops import (
    quasiseparable_chunked,
    quasiseparable_matrix,
    quasiseparable_ref,
    quasiseparable_two_pass,
    semiseparable_chunked,
    semiseparable_loop,
    semiseparable_matrix,
    semiseparable_ref,
)

from helpers import hydra_inputs, ssm_inputs

# L: 1, primes, powers of two and non-multiples of the chunk size
LENGTHS = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13, 16, 17, 31, 32, 37])


@st.composite
def shapes(draw):
    g = draw(st.sampled_from([1, 2]))
    h = g * draw(st.sampled_from([1, 2, 3]))
    return dict(b=draw(st.integers(1, 2)), l=draw(LENGTHS), h=h, p=draw(st.integers(1, 4)), g=g,
                n=draw(st.integers(1, 5)), q=draw(st.integers(1, 9)))


def close(a, b, tol=1e-9):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- semiseparable
@given(shapes(), st.booleans())
def test_semiseparable_chunked_equals_matrix(s, with_state):
    x, dt, A, B, C = ssm_inputs(s["b"], s["l"], s["h"], s["p"], s["g"], s["n"])
    s0 = torch.randn(s["b"], s["h"], s["p"], s["n"], dtype=torch.float64) if with_state else None
    y, final = semiseparable_chunked(x, dt, A, B, C, chunk_size=s["q"], initial_states=s0, return_final_states=True)
    y_ref, final_ref = semiseparable_ref(x, dt, A, B, C, initial_states=s0, return_final_states=True)
    close(y, y_ref)
    close(final, final_ref)
    if s0 is None:  # the matrix alone, applied by hand
        M = semiseparable_matrix(dt, A, B, C)
        close(y, torch.einsum("bhij,bjhp->bihp", M, x))


@given(shapes())
def test_semiseparable_matrix_equals_loop(s):
    x, dt, A, B, C = ssm_inputs(s["b"], s["l"], s["h"], s["p"], s["g"], s["n"])
    s0 = torch.randn(s["b"], s["h"], s["p"], s["n"], dtype=torch.float64)
    y_loop, final_loop = semiseparable_loop(x, dt, A, B, C, initial_states=s0)
    y_ref, final_ref = semiseparable_ref(x, dt, A, B, C, initial_states=s0, return_final_states=True)
    close(y_loop, y_ref)
    close(final_loop, final_ref)


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
@given(shapes(), st.sampled_from(["none", "head", "token"]), st.sampled_from(["none", "shared", "pair"]))
def test_quasiseparable_fast_paths_equal_matrix(s, diag, states):
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = hydra_inputs(s["b"], s["l"], s["h"], s["p"], s["g"], s["n"], diag=diag)
    shape = (s["b"], s["h"], s["p"], s["n"])
    init = {"none": None, "shared": torch.randn(shape[1:], dtype=torch.float64),
            "pair": (torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64))}[states]
    args = (x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)
    y_ref = quasiseparable_ref(*args, initial_states=init)
    close(quasiseparable_chunked(*args, chunk_size=s["q"], initial_states=init), y_ref)
    close(quasiseparable_two_pass(*args, chunk_size=s["q"], initial_states=init), y_ref)
    if init is None:
        M = quasiseparable_matrix(dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)
        close(y_ref, torch.einsum("bhij,bjhp->bihp", M, x))


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


@given(shapes())
def test_quasiseparable_gradients_equal_reference(s):
    args = hydra_inputs(s["b"], s["l"], s["h"], s["p"], s["g"], s["n"], requires_grad=True)
    init = torch.randn(s["h"], s["p"], s["n"], dtype=torch.float64, requires_grad=True)
    leaves = [t for t in args if t is not None] + [init]
    weight = torch.randn(s["b"], s["l"], s["h"], s["p"], dtype=torch.float64)
    grads = []
    for fn, kw in ((quasiseparable_ref, {}), (quasiseparable_chunked, {"chunk_size": s["q"]}),
                   (quasiseparable_two_pass, {"chunk_size": s["q"]})):
        out = fn(*args, initial_states=init, **kw)
        grads.append(torch.autograd.grad((out * weight).sum(), leaves))
    for fast in grads[1:]:
        for g_fast, g_ref in zip(fast, grads[0]):
            close(g_fast, g_ref, tol=1e-8)


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
