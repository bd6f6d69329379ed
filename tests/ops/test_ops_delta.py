"""The delta rule (DeltaNet, negative eigenvalues, DeltaProduct): chunked against loops and matrices.

Every comparison is in float64 at 1e-10 relative to the largest entry, outputs and
gradients of every input. The strategies reach the edges: batch 0, L = 0 and 1, L not a
multiple of the chunk, chunks of 1 and longer than L, R = 1, 2, 3 factors, betas exactly
0, 1 and 2 (reflections) or anywhere in [0, 2], keys unit-norm, shorter, or raw.
"""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hydra_ssm.ops import (
    bi_delta_chunked,
    bi_delta_matrix,
    bi_delta_ref,
    delta_chunked,
    delta_loop,
    delta_matrix,
    delta_ref,
)

TOL = 1e-10
LENGTHS = st.sampled_from([1, 2, 3, 5, 7, 8, 11, 17, 0])
CHUNKS = st.sampled_from([1, 2, 3, 4, 5, 8, 64])
BETAS = ["zero", "one", "two", "uniform", "edges"]
KEYS = ["unit", "short", "raw"]


def edge(b=1, l=7, r=2, q=3, beta="edges", keys="unit", h=2, p=2, n=3, seed=1):
    """One shape at the edges, always run (besides what hypothesis draws)."""
    return dict(b=b, l=l, h=h, p=p, n=n, r=r, q=q, seed=seed, beta=beta, keys=keys)


# L not a multiple of the chunk, chunk 1, chunk > L, L = 1, batch 0, reflections, R = 3, raw keys
EDGES = [edge(), edge(r=3, q=1, beta="two"), edge(l=5, q=64, keys="raw", beta="uniform"), edge(l=1, r=1, q=1),
         edge(b=0), edge(b=2, l=11, r=3, q=4, keys="short", beta="two")]


@st.composite
def shapes(draw):
    return dict(b=draw(st.sampled_from([1, 2, 0])), l=draw(LENGTHS), h=draw(st.integers(1, 2)),
                p=draw(st.integers(1, 3)), n=draw(st.integers(1, 4)), r=draw(st.sampled_from([1, 2, 3])),
                q=draw(CHUNKS), seed=draw(st.integers(0, 2 ** 16)), beta=draw(st.sampled_from(BETAS)),
                keys=draw(st.sampled_from(KEYS)))


def betas(s, gen, shape):
    """(B, L, H, R) strengths of kind s["beta"]: all 0, 1 or 2, uniform in [0, 2], or a mix of 0, 1, 2 and uniform."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    kind = s["beta"]
    if kind in ("zero", "one", "two"):
        return torch.full(shape, float(["zero", "one", "two"].index(kind)), dtype=torch.float64)
    if kind == "uniform":
        return u
    pick = torch.randint(0, 4, shape, generator=gen)
    return torch.where(pick < 3, pick.double(), u)


def keys(s, gen, shape):
    """(B, L, H, R, N) keys: unit-norm, of norm in [0, 1], or raw Gaussian / sqrt(N)."""
    k = torch.randn(shape, generator=gen, dtype=torch.float64)
    if s["keys"] == "raw":
        return k / shape[-1] ** 0.5
    k = torch.nn.functional.normalize(k, dim=-1)
    if s["keys"] == "short":
        k = k * torch.rand(shape[:-1], generator=gen, dtype=torch.float64).unsqueeze(-1)
    return k


def delta_inputs(s, requires_grad=False, seed_offset=0):
    """x, q, k, beta (float64) of the shapes and kinds in ``s``."""
    gen = torch.Generator().manual_seed(s["seed"] + seed_offset)
    b, l, h, p, n, r = (s[k] for k in "blhpnr")
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    q = torch.randn(b, l, h, n, generator=gen, dtype=torch.float64)
    out = [x, q, keys(s, gen, (b, l, h, r, n)), betas(s, gen, (b, l, h, r))]
    return [t.requires_grad_(requires_grad) for t in out]


def bi_inputs(s, diag, requires_grad=False):
    """x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D."""
    x, q_f, k_f, beta_f = delta_inputs(s, requires_grad)
    _, q_b, k_b, beta_b = delta_inputs(s, requires_grad, seed_offset=1)
    gen = torch.Generator().manual_seed(s["seed"] + 2)
    D = {"none": None, "head": torch.randn(s["h"], generator=gen, dtype=torch.float64),
         "token": torch.randn(s["b"], s["l"], s["h"], generator=gen, dtype=torch.float64)}[diag]
    if D is not None:
        D.requires_grad_(requires_grad)
    return [x, q_f, k_f, beta_f, q_b, k_b, beta_b, D]


def close_scaled(a, b, tol=TOL):
    """a == b up to ``tol`` relative to the largest entry of b."""
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def gradients(out, leaves, seed):
    """d sum(w * out) / d leaf, for a fixed random weight w (zeros where out depends on nothing:
    the loops give a constant zero output for L = 1 without D)."""
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in leaves]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), leaves, allow_unused=True, materialize_grads=True)


def bi_loop(x, q_f, k_f, beta_f, q_b, k_b, beta_b, D=None, factor_order=1):
    """The bidirectional delta rule token by token in natural order, independently of the flips:
    y_i = S_f(i-1)^T q_f[i-1] + S_b(i+1)^T q_b[i+1] + D_i x_i, where S_f(t) has seen tokens 0..t
    (left to right) and S_b(t) tokens L-1..t (right to left), each token's factors applied r = 1..R
    (``factor_order=-1``: R..1, the wrong order, for the controls)."""
    b, l, h, p = x.shape

    def states(q, k, beta, tokens):
        """{t: S(t)^T q_t} over ``tokens`` visited in order."""
        state, reads = x.new_zeros(b, h, q.shape[-1], p), {}
        for t in tokens:
            for r in list(range(k.shape[3]))[::factor_order]:
                kr, br = k[:, t, :, r], beta[:, t, :, r, None, None]
                state = (state - br * kr[..., None] * torch.einsum("bhn,bhnp->bhp", kr, state)[:, :, None]
                         + br * kr[..., None] * x[:, t, :, None, :])
            reads[t] = torch.einsum("bhnp,bhn->bhp", state, q[:, t])
        return reads

    fwd = states(q_f, k_f, beta_f, range(l))
    bwd = states(q_b, k_b, beta_b, range(l - 1, -1, -1))
    zero = x.new_zeros(b, h, p)
    rows = [fwd.get(i - 1, zero) + bwd.get(i + 1, zero) for i in range(l)]
    y = torch.stack(rows, dim=1) if rows else x[:, :0] * 0
    if D is not None:
        y = y + x * (D.expand(b, l, h) if D.dim() == 1 else D).unsqueeze(-1)
    return y


# ---------------------------------------------------------------- causal
@settings(max_examples=30)
@given(shapes())
def test_loop_equals_matrix(s):
    x, q, k, beta = delta_inputs(s)
    y = delta_loop(x, q, k, beta)
    close_scaled(delta_ref(x, q, k, beta), y)
    close_scaled(torch.einsum("bhij,bjhp->bihp", delta_matrix(q, k, beta), x), y)


@settings(max_examples=40)
@given(shapes())
@example(EDGES[0])
@example(EDGES[1])
@example(EDGES[2])
@example(EDGES[3])
@example(EDGES[4])
@example(EDGES[5])
def test_chunked_equals_loop_with_gradients(s):
    x, q, k, beta = leaves = delta_inputs(s, requires_grad=True)
    y = delta_chunked(x, q, k, beta, chunk_size=s["q"])
    y_loop = delta_loop(x, q, k, beta)
    close_scaled(y, y_loop)
    for g, g_loop in zip(gradients(y, leaves, s["seed"]), gradients(y_loop, leaves, s["seed"])):
        close_scaled(g, g_loop)


def test_matrix_is_lower_triangular_and_reads_the_later_factors():
    """For R = 2 the diagonal is q_t^T (H_{t,2} beta_1 k_1 + beta_2 k_2): the second factor acts on the first write."""
    s = dict(b=1, l=5, h=1, p=1, n=3, r=2, seed=3, beta="uniform", keys="raw")
    x, q, k, beta = delta_inputs(s)
    M = delta_matrix(q, k, beta)
    assert torch.count_nonzero(M.triu(1)) == 0
    k1, k2, b1, b2 = k[0, 2, 0, 0], k[0, 2, 0, 1], beta[0, 2, 0, 0], beta[0, 2, 0, 1]
    w = b1 * k1 - b2 * k2 * (k2 @ (b1 * k1)) + b2 * k2
    close_scaled(M[0, 0, 2, 2], q[0, 2, 0] @ w)


def test_mixed_dtypes_and_float32():
    """float32 x with float64 keys: the work is float64, the output float32; all-float32 stays close."""
    s = dict(b=2, l=37, h=2, p=3, n=4, r=2, seed=5, beta="uniform", keys="unit")
    x, q, k, beta = delta_inputs(s)
    y = delta_loop(x, q, k, beta)
    mixed = delta_chunked(x.float(), q, k, beta, chunk_size=8)
    assert mixed.dtype == torch.float32
    close_scaled(mixed.double(), y, 1e-6)
    single = delta_chunked(*(t.float() for t in (x, q, k, beta)), chunk_size=8)
    assert single.dtype == torch.float32
    close_scaled(single.double(), y, 1e-4)


def test_empty_inputs_give_gradients():
    for b, l in ((0, 5), (2, 0)):
        s = dict(b=b, l=l, h=2, p=3, n=4, r=2, seed=0, beta="uniform", keys="unit")
        leaves = bi_inputs(s, "token", requires_grad=True)
        for y in (delta_chunked(*leaves[:4]), bi_delta_chunked(*leaves)):
            assert y.shape == (b, l, 2, 3)
            grads = torch.autograd.grad(y.sum(), leaves, allow_unused=True, materialize_grads=True)
            assert [g.shape for g in grads] == [t.shape for t in leaves]


# ---------------------------------------------------------------- negative eigenvalues
@settings(max_examples=20)
@given(st.lists(st.booleans(), min_size=1, max_size=20), st.integers(1, 4), st.integers(0, 2 ** 16))
def test_negative_eigenvalues_track_parity(bits, n, seed):
    """A start token writes 1 along a fixed unit key; then a "1" has beta = 2 (a reflection of that
    key's direction) and a "0" beta = 0. Read along the key, the state after every token is
    (-1)^(number of ones so far). With beta in [0, 1] the factor along the key is 1 - beta >= 0:
    no setting of the strengths can flip the sign."""
    gen = torch.Generator().manual_seed(seed)
    key = torch.nn.functional.normalize(torch.randn(n, generator=gen, dtype=torch.float64), dim=0)
    l = len(bits) + 1
    x = torch.zeros(1, l, 1, 1, dtype=torch.float64)
    x[0, 0] = 1.0
    q = key.expand(1, l, 1, n)
    k = key.expand(1, l, 1, 1, n)
    beta = torch.tensor([1.0] + [2.0 if bit else 0.0 for bit in bits], dtype=torch.float64).view(1, l, 1, 1)
    y = delta_chunked(x, q, k, beta, chunk_size=3)[0, :, 0, 0]
    parity = torch.tensor([(-1.0) ** sum(bits[:t]) for t in range(l)], dtype=torch.float64)
    close_scaled(y, parity)
    contracting = torch.cat([beta[:, :1], torch.rand(1, l - 1, 1, 1, generator=gen, dtype=torch.float64)], dim=1)
    assert (delta_chunked(x, q, k, contracting, chunk_size=3) >= 0).all()


# ---------------------------------------------------------------- bidirectional
@settings(max_examples=30)
@given(shapes(), st.sampled_from(["none", "head", "token"]))
def test_bidirectional_chunked_equals_matrix_and_loop(s, diag):
    x, q_f, k_f, beta_f, q_b, k_b, beta_b, D = inputs = bi_inputs(s, diag)
    y_loop = bi_loop(*inputs)
    close_scaled(bi_delta_ref(*inputs), y_loop)
    close_scaled(bi_delta_chunked(*inputs, chunk_size=s["q"]), y_loop)
    M = bi_delta_matrix(q_f, k_f, beta_f, q_b, k_b, beta_b, D)
    close_scaled(torch.einsum("bhij,bjhp->bihp", M, x), y_loop)


@settings(max_examples=30)
@given(shapes(), st.sampled_from(["none", "head", "token"]))
@example(EDGES[0], "token")
@example(EDGES[1], "head")
@example(EDGES[2], "none")
@example(EDGES[5], "token")
def test_bidirectional_gradients_equal_loop(s, diag):
    inputs = bi_inputs(s, diag, requires_grad=True)
    leaves = [t for t in inputs if t is not None]
    y = bi_delta_chunked(*inputs, chunk_size=s["q"])
    y_loop = bi_loop(*inputs)
    close_scaled(y, y_loop)
    for g, g_loop in zip(gradients(y, leaves, s["seed"]), gradients(y_loop, leaves, s["seed"])):
        close_scaled(g, g_loop)


def test_wrong_factor_order_or_flip_is_detected():
    """Controls: the comparisons above can fail. For R = 2, applying a token's factors R..1 in
    the backward direction, or flipping the factors along with the tokens, or not flipping at all,
    gives a different result."""
    s = dict(b=1, l=6, h=2, p=2, n=3, r=2, seed=11, beta="uniform", keys="unit")
    x, q_f, k_f, beta_f, q_b, k_b, beta_b, D = inputs = bi_inputs(s, "head")
    y = bi_delta_chunked(*inputs, chunk_size=4)
    close_scaled(y, bi_loop(*inputs))
    wrong = {
        "factors reversed (loop)": bi_loop(*inputs, factor_order=-1),
        "factors flipped with the tokens": bi_delta_chunked(x, q_f, k_f, beta_f, q_b, k_b.flip(3), beta_b.flip(3), D),
        "no flip": bi_delta_chunked(x, q_f, k_f, beta_f, q_b.flip(1), k_b.flip(1), beta_b.flip(1), D),
    }
    for name, other in wrong.items():
        with pytest.raises(AssertionError):
            close_scaled(other, y)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument():
    s = dict(b=2, l=5, h=2, p=3, n=4, r=2, seed=0, beta="uniform", keys="unit")
    x, q, k, beta, q_b, k_b, beta_b, D = bi_inputs(s, "head")
    cases = [
        (ValueError, "x must have shape", lambda: delta_chunked(x[0], q, k, beta)),
        (ValueError, "q must have shape", lambda: delta_chunked(x, q[:, :4], k, beta)),
        (ValueError, "k must have shape", lambda: delta_chunked(x, q, k[..., 0, :], beta)),
        (ValueError, "k must have shape", lambda: delta_chunked(x, q, k[..., :3], beta)),
        (ValueError, "k must have shape", lambda: delta_loop(x, q, k[..., :0, :], beta[..., :0])),
        (ValueError, "beta must have shape", lambda: delta_ref(x, q, k, beta[..., :1])),
        (TypeError, "x must be a floating-point", lambda: delta_chunked(x.long(), q, k, beta)),
        (TypeError, "beta must be a floating-point", lambda: delta_chunked(x, q, k, beta.long())),
        (ValueError, "chunk_size", lambda: delta_chunked(x, q, k, beta, chunk_size=0)),
        (ValueError, "D must have shape", lambda: bi_delta_chunked(x, q, k, beta, q_b, k_b, beta_b, D[:1])),
        (ValueError, "k_bwd must have", lambda: bi_delta_ref(x, q, k, beta, q_b, k_b[..., :1, :], beta_b[..., :1])),
        (ValueError, "q_fwd must have shape", lambda: bi_delta_chunked(x, q[:1], k, beta, q_b, k_b, beta_b)),
        (ValueError, "beta_bwd must have shape", lambda: bi_delta_matrix(q, k, beta, q_b, k_b, beta_b[:, :2])),
        (TypeError, "q_bwd must be a floating-point", lambda: bi_delta_matrix(q, k, beta, q_b.int(), k_b, beta_b)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
