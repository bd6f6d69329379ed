"""Diagonal-gated recurrences (ops/gated.py): the chunked scans against the explicit matrix and the loop."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_ssm.ops import (
    bi_gated_chunked,
    bi_gated_matrix,
    bi_gated_ref,
    gated_chunked,
    gated_loop,
    gated_matrix,
    gated_ref,
    quasiseparable_ref,
    semiseparable_ref,
)

from test_ops import CHUNKS, LENGTHS, close_scaled, gradients

TOL = 1e-10
# Log decays mixed into one sequence at the edges: none (|a| = 1), tiny, and huge (underflows to an exact 0).
EDGE_LOG_DECAYS = torch.tensor([0.0, -1e-8, -1e4], dtype=torch.float64)
PHASES = st.sampled_from(["none", "real q", "complex q"])
DIAGS = st.sampled_from(["none", "head", "token"])


@st.composite
def shapes(draw):
    return dict(b=draw(st.sampled_from([1, 2, 0])), l=draw(LENGTHS), h=draw(st.sampled_from([1, 2])),
                p=draw(st.integers(1, 3)), n=draw(st.integers(1, 4)), q=draw(CHUNKS),
                seed=draw(st.integers(0, 2 ** 16)), scale=draw(st.sampled_from([1.0, 30.0])),
                edge_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])), phase=draw(PHASES))


def direction(s, gen, requires_grad=False):
    """q, k, log_decay, phase (B, L, H, N) of one direction, float64, with the edge log decays of ``s``."""
    shape = (s["b"], s["l"], s["h"], s["n"])
    q, k = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen,
                                                                               dtype=torch.float64)
    log_decay = -torch.rand(shape, generator=gen, dtype=torch.float64) * s["scale"]
    hit = torch.rand(shape, generator=gen, dtype=torch.float64) < s["edge_fraction"]
    edge = EDGE_LOG_DECAYS[torch.randint(0, 3, shape, generator=gen)]
    log_decay = torch.where(hit, edge, log_decay)
    phase = None
    if s["phase"] != "none":
        phase = (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 8
        if s["phase"] == "complex q":
            q = torch.complex(q, torch.randn(shape, generator=gen, dtype=torch.float64))
    return [None if t is None else t.requires_grad_(requires_grad) for t in (q, k, log_decay, phase)]


def causal_inputs(s, requires_grad=False):
    gen = torch.Generator().manual_seed(s["seed"])
    x = torch.randn(s["b"], s["l"], s["h"], s["p"], generator=gen, dtype=torch.float64)
    return [x.requires_grad_(requires_grad)] + direction(s, gen, requires_grad)


def bi_inputs(s, diag, requires_grad=False):
    """(x, q_f, k_f, ld_f, q_b, k_b, ld_b, D, phase_f, phase_b), the argument order of ``bi_gated_*``."""
    gen = torch.Generator().manual_seed(s["seed"])
    x = torch.randn(s["b"], s["l"], s["h"], s["p"], generator=gen, dtype=torch.float64)
    q_f, k_f, ld_f, ph_f = direction(s, gen)
    q_b, k_b, ld_b, ph_b = direction(s, gen)
    D = {"none": None, "head": torch.randn(s["h"], generator=gen, dtype=torch.float64),
         "token": torch.randn(s["b"], s["l"], s["h"], generator=gen, dtype=torch.float64)}[diag]
    args = [x, q_f, k_f, ld_f, q_b, k_b, ld_b, D, ph_f, ph_b]
    return [None if t is None else t.requires_grad_(requires_grad) for t in args]


def assert_same_gradients(fast_fn, ref_fn, args, names, seed):
    """Outputs and the gradient of every tensor argument of ``fast_fn`` and ``ref_fn`` agree."""
    leaves = [t for t in args if t is not None]
    leaf_names = [n for n, t in zip(names, args) if t is not None]
    y_fast, y_ref = fast_fn(*args), ref_fn(*args)
    close_scaled(y_fast.detach(), y_ref.detach(), TOL)
    weight = (torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64),)
    g_fast = gradients((y_fast,), weight, leaves)
    g_ref = gradients((y_ref,), weight, leaves)
    for name, a, b in zip(leaf_names, g_fast, g_ref):
        assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all(), name
        try:
            close_scaled(a, b, TOL)
        except AssertionError as err:
            raise AssertionError(f"gradient of {name}: {err}") from None


CAUSAL_NAMES = ["x", "q", "k", "log_decay", "phase"]
BI_NAMES = ["x", "q_fwd", "k_fwd", "log_decay_fwd", "q_bwd", "k_bwd", "log_decay_bwd", "D", "phase_fwd", "phase_bwd"]


# ---------------------------------------------------------------- causal
@settings(max_examples=25, deadline=None)
@given(shapes())
def test_gated_loop_equals_matrix(s):
    x, q, k, log_decay, phase = causal_inputs(s)
    y_loop = gated_loop(x, q, k, log_decay, phase)
    y_ref = gated_ref(x, q, k, log_decay, phase)
    close_scaled(y_loop, y_ref, TOL)
    M = gated_matrix(q, k, log_decay, phase)  # the matrix alone, applied by hand
    assert M.dtype == torch.float64 and M.shape == (s["b"], s["h"], s["l"], s["l"])
    close_scaled(torch.einsum("bhij,bjhp->bihp", M, x), y_ref, TOL)


@settings(max_examples=30, deadline=None)
@given(shapes())
def test_gated_chunked_equals_reference_with_gradients(s):
    args = causal_inputs(s, requires_grad=True)
    assert_same_gradients(lambda *a: gated_chunked(*a, chunk_size=s["q"]), gated_ref, args, CAUSAL_NAMES, s["seed"])


def test_gated_chunked_float32_huge_decays_exact_and_finite():
    """Chunk totals far beyond float32's exponent range: log decays kept in float64, nothing inf or NaN."""
    s = dict(b=1, l=37, h=2, p=3, n=4, seed=5, scale=1.0, edge_fraction=0.5, phase="complex q")
    x, q, k, log_decay, phase = causal_inputs(s)
    args32 = [t.to(torch.complex64 if t.is_complex() else torch.float32).requires_grad_() for t in
              (x, q, k, log_decay, phase)]
    y = gated_chunked(*args32, chunk_size=16)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), gated_ref(x, q, k, log_decay, phase), rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    for t in args32:
        assert torch.isfinite(torch.view_as_real(t.grad) if t.grad.is_complex() else t.grad).all()


@pytest.mark.parametrize("step", [-7.9, -8.1, -63.0, -65.0, -200.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_chunked_both_sides_of_the_factor_limit(step, dtype):
    """Sub-chunks (8 positions) whose decay is just below and just above the factored scores' limit
    (64 in float32, 512 in float64): either path, the reference's values and gradients."""
    s = dict(b=1, l=29, h=1, p=2, n=3, seed=9, scale=1.0, edge_fraction=0.0, phase="complex q")
    x, q, k, _, phase = causal_inputs(s)
    log_decay = torch.full(q.shape, step, dtype=torch.float64)
    log_decay[:, ::3] = -0.01  # some pairs within reach of each other
    cast = [t.to(dtype if not t.is_complex() else {torch.float32: torch.complex64}.get(dtype, t.dtype))
            for t in (x, q, k, log_decay, phase)]
    tol = TOL if dtype == torch.float64 else 1e-5
    leaves = [t.requires_grad_() for t in cast]
    ref_leaves = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64).requires_grad_()
                  for t in cast]
    y, y_ref = gated_chunked(*leaves, chunk_size=16), gated_ref(*ref_leaves)
    torch.testing.assert_close(y.detach().double(), y_ref.detach(), rtol=tol, atol=tol)
    weight = (torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64),)
    for name, a, b in zip(CAUSAL_NAMES, gradients((y,), (weight[0].to(dtype),), leaves),
                          gradients((y_ref,), weight, ref_leaves)):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())),
                                   msg=lambda m: f"gradient of {name}: {m}")


def test_gated_scalar_decay_is_mamba2():
    """log_decay = dt * A equal across n, k = B * dt, q = C: the causal SSD."""
    b, l, h, p, n = 2, 11, 3, 4, 5
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    dt = torch.rand(b, l, h, generator=gen, dtype=torch.float64) + 0.01
    A = -(torch.rand(h, generator=gen, dtype=torch.float64) + 0.1)
    B, C = torch.randn(b, l, h, n, generator=gen, dtype=torch.float64), torch.randn(b, l, h, n, generator=gen,
                                                                                   dtype=torch.float64)
    log_decay = (dt * A)[..., None].expand(b, l, h, n)
    y = gated_chunked(x, C, B * dt[..., None], log_decay, chunk_size=4)
    close_scaled(y, semiseparable_ref(x, dt, A, B, C), TOL)


def test_gated_empty_inputs_give_gradients():
    for b, l in ((0, 5), (2, 0)):
        s = dict(b=b, l=l, h=2, p=3, n=4, seed=0, scale=1.0, edge_fraction=0.0, phase="complex q")
        args = causal_inputs(s, requires_grad=True)
        y = gated_chunked(*args, chunk_size=3)
        assert y.shape == (b, l, 2, 3)
        grads = torch.autograd.grad(y.sum(), args, allow_unused=True, materialize_grads=True)
        assert [g.shape for g in grads] == [t.shape for t in args]


def test_gated_mixed_dtypes_output_in_x_dtype():
    s = dict(b=1, l=9, h=2, p=3, n=4, seed=2, scale=1.0, edge_fraction=0.0, phase="real q")
    x, q, k, log_decay, phase = causal_inputs(s)
    y = gated_chunked(x.float(), q, k.float(), log_decay, phase.float(), chunk_size=4)  # float64 q: float64 work
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, gated_ref(x, q, k, log_decay, phase).float())


# ---------------------------------------------------------------- bidirectional
@settings(max_examples=30, deadline=None)
@given(shapes(), DIAGS, st.sampled_from(["both", "fwd", "bwd"]))
def test_bi_gated_chunked_equals_reference_with_gradients(s, diag, rotating):
    args = bi_inputs(s, diag, requires_grad=True)
    if rotating == "fwd":  # only one direction rotates (the other's q must then be real)
        args[4], args[9] = args[4].real.detach().requires_grad_() if args[4].is_complex() else args[4], None
    if rotating == "bwd":
        args[1], args[8] = args[1].real.detach().requires_grad_() if args[1].is_complex() else args[1], None
    assert_same_gradients(lambda *a: bi_gated_chunked(*a, chunk_size=s["q"]), bi_gated_ref, args, BI_NAMES,
                          s["seed"])


def bi_matrix_by_entries(q_f, k_f, ld_f, q_b, k_b, ld_b, D, ph_f, ph_b, shift=1, flip=True):
    """Hydra's construction entry by entry: M[i, j] = M_f[i-1, j] below, M_r[L-2-i, L-1-j] above (M_r: the
    causal matrix of the reversed backward inputs), D on the diagonal. ``shift`` and ``flip`` break it on
    purpose for the controls."""
    rev = (lambda t: None if t is None else t.flip(1)) if flip else (lambda t: t)  # noqa: E731
    M_f = gated_matrix(q_f, k_f, ld_f, ph_f)
    M_r = gated_matrix(rev(q_b), rev(k_b), rev(ld_b), rev(ph_b))
    b, h, l, _ = M_f.shape
    M = torch.zeros(b, h, l, l, dtype=torch.float64)
    for i in range(l):
        for j in range(l):
            if j < i and i - shift >= 0:
                M[:, :, i, j] = M_f[:, :, i - shift, j]
            elif j > i and l - 1 - i - shift >= 0:
                M[:, :, i, j] = M_r[:, :, l - 1 - i - shift, l - 1 - j]
            elif i == j and D is not None:
                M[:, :, i, i] = D if D.dim() == 1 else D[:, i]
    return M


@settings(max_examples=20, deadline=None)
@given(shapes(), DIAGS)
def test_bi_gated_equals_construction_by_entries(s, diag):
    x, *rest = bi_inputs(s, diag)
    expected = bi_matrix_by_entries(*rest)
    close_scaled(bi_gated_matrix(*rest), expected, TOL)
    close_scaled(bi_gated_chunked(x, *rest, chunk_size=s["q"]), torch.einsum("bhij,bjhp->bihp", expected, x), TOL)


@pytest.mark.parametrize("broken", [dict(shift=0), dict(shift=2), dict(flip=False)])
def test_bi_gated_construction_control_detects_a_wrong_shift_or_flip(broken):
    """The entry-by-entry construction is a real check: broken on purpose, it disagrees with the op."""
    s = dict(b=1, l=7, h=2, p=3, n=3, seed=4, scale=1.0, edge_fraction=0.0, phase="complex q")
    x, *rest = bi_inputs(s, "head")
    y = bi_gated_chunked(x, *rest, chunk_size=3)
    wrong = torch.einsum("bhij,bjhp->bihp", bi_matrix_by_entries(*rest, **broken), x)
    with pytest.raises(AssertionError):
        close_scaled(y, wrong, 1e-6)


@pytest.mark.parametrize("diag", ["none", "head", "token"])
def test_bi_gated_scalar_decay_is_hydra(diag):
    """Scalar decays broadcast over N: the library's Hydra reference (quasiseparable_ref)."""
    b, l, h, p, n = 2, 10, 2, 3, 4
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    A = -(torch.rand(h, generator=gen, dtype=torch.float64) + 0.1)
    dt_f, dt_b = (torch.rand(b, l, h, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    B_f, C_f, B_b, C_b = (torch.randn(b, l, h, n, generator=gen, dtype=torch.float64) for _ in range(4))
    D = {"none": None, "head": torch.randn(h, generator=gen, dtype=torch.float64),
         "token": torch.randn(b, l, h, generator=gen, dtype=torch.float64)}[diag]
    ld_f, ld_b = ((dt * A)[..., None].expand(b, l, h, n) for dt in (dt_f, dt_b))
    y = bi_gated_chunked(x, C_f, B_f * dt_f[..., None], ld_f, C_b, B_b * dt_b[..., None], ld_b, D, chunk_size=3)
    close_scaled(y, quasiseparable_ref(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D), TOL)


# ---------------------------------------------------------------- bad inputs
def _good(phase=True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=gen)
    q, k, ph = (torch.randn(2, 5, 3, 6, generator=gen) for _ in range(3))
    ld = -torch.rand(2, 5, 3, 6, generator=gen)
    return dict(x=x, q=q, k=k, log_decay=ld, phase=ph if phase else None)


CAUSAL_BAD = [
    (dict(x=torch.zeros(2, 5, 3)), ValueError, "x must have shape"),
    (dict(x=torch.zeros(2, 5, 3, 4, dtype=torch.long)), TypeError, "x must be a floating-point"),
    (dict(q=torch.zeros(2, 4, 3, 6)), ValueError, "q must have shape"),
    (dict(k=torch.zeros(2, 5, 3, 5)), ValueError, "k must have the shape of q"),
    (dict(k=torch.zeros(2, 5, 3, 6, dtype=torch.int32)), TypeError, "k must be a floating-point"),
    (dict(log_decay=torch.zeros(2, 5, 3, 6, dtype=torch.complex64)), TypeError, "log_decay must be a floating"),
    (dict(log_decay=torch.full((2, 5, 3, 6), 0.1)), ValueError, "log_decay must be <= 0"),
    (dict(phase=torch.zeros(2, 5, 3, 1)), ValueError, "phase must have the shape of q"),
    (dict(phase=None, q=torch.zeros(2, 5, 3, 6, dtype=torch.complex64)), ValueError, "q may be complex only"),
    (dict(x=[[1.0]]), ValueError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("fn", [gated_chunked, gated_ref, gated_loop])
@pytest.mark.parametrize("change, error, message", CAUSAL_BAD)
def test_gated_bad_inputs_name_the_argument(fn, change, error, message):
    args = {**_good(), **change}
    with pytest.raises(error, match=message):
        fn(**args)


BI_BAD = [
    (dict(q_bwd=torch.zeros(2, 5, 3, 5)), ValueError, "q_bwd must have the shape of q_fwd"),
    (dict(k_bwd=torch.zeros(2, 5, 3, 5)), ValueError, "k_bwd must have the shape of q_bwd"),
    (dict(log_decay_bwd=torch.full((2, 5, 3, 6), 1e-3)), ValueError, "log_decay_bwd must be <= 0"),
    (dict(log_decay_fwd=torch.full((2, 5, 3, 6), 1e-3)), ValueError, "log_decay_fwd must be <= 0"),
    (dict(phase_fwd=torch.zeros(2, 5, 4, 6)), ValueError, "phase_fwd must have the shape of q_fwd"),
    (dict(q_fwd=torch.zeros(2, 5, 3, 6, dtype=torch.complex64)), ValueError, "q_fwd may be complex only"),
    (dict(D=torch.zeros(4)), ValueError, "D must have shape"),
    (dict(D=torch.zeros(3, dtype=torch.long)), TypeError, "D must be a floating-point"),
]


@pytest.mark.parametrize("fn", [bi_gated_chunked, bi_gated_ref])
@pytest.mark.parametrize("change, error, message", BI_BAD)
def test_bi_gated_bad_inputs_name_the_argument(fn, change, error, message):
    f, b = _good(phase=False), _good(phase=False)
    args = dict(x=f["x"], q_fwd=f["q"], k_fwd=f["k"], log_decay_fwd=f["log_decay"], q_bwd=b["q"], k_bwd=b["k"],
                log_decay_bwd=b["log_decay"])
    with pytest.raises(error, match=message):
        fn(**{**args, **change})


def test_gated_chunk_size_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        gated_chunked(**_good(), chunk_size=0)
