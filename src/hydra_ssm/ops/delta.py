"""The delta rule (DeltaNet, negative eigenvalues, DeltaProduct), causal and bidirectional, exactly chunked.

What is computed
----------------
Layout: x (B, L, H, P) values, q (B, L, H, N) queries, k (B, L, H, R, N) keys
with R >= 1 Householder factors per token (R = 1: DeltaNet; R > 1:
DeltaProduct), beta (B, L, H, R) write strengths (any real; [0, 1] is DeltaNet,
[0, 2] with unit-norm keys allows negative eigenvalues: beta = 2 makes the
factor a reflection). Per head a state S (N x P), S_0 = 0, and at token t, for
r = 1..R in order::

    S <- (I - beta_{t,r} k_{t,r} k_{t,r}^T) S + beta_{t,r} k_{t,r} x_t^T
    y_t = S^T q_t                    (after all of token t's factors: inclusive)

Every factor of a token writes the token's one value x_t, so the layer is one
L x L matrix per head applied to x, ``y = M x``. With H_{t,r} = I - beta_{t,r}
k_{t,r} k_{t,r}^T, token t's transition A_t = H_{t,R} ... H_{t,1} and what it
writes per unit value w_t = sum_r H_{t,R} ... H_{t,r+1} beta_{t,r} k_{t,r}
(the later factors of the token act on its earlier writes)::

    M[i, j] = q_i^T A_i A_{i-1} ... A_{j+1} w_j        (j <= i, else 0)

The chunked form (WY / UT representation)
-----------------------------------------
DeltaProduct first becomes DeltaNet: the R factors of every token are laid out
one after the other, a sequence of L * R *steps* s = t * R + (r - 1), step s
having key k_s, strength beta_s and value x_t (the token's value repeated R
times); the query of token t reads the state after its last step only. Below,
a chunk is C = Q * R consecutive steps (Q tokens: ``chunk_size`` counts
tokens, so a chunk always ends on a token boundary).

Inside a chunk entering with state S_0, write each step as a rank-one update::

    S_s = S_{s-1} + k_s u_s^T,        u_s = beta_s (v_s - S_{s-1}^T k_s)

Since S_{s-1} = S_0 + sum_{m<s} k_m u_m^T, u_s + beta_s sum_{m<s} (k_s . k_m) u_m
= beta_s (v_s - S_0^T k_s): all of the chunk's u at once solve the unit lower
triangular system (rows U', K, V: C x P, C x N, C x P)::

    (I + diag(beta) StrictLower(K K^T)) U' = diag(beta) (V - K S_0)

With T = (I + diag(beta) StrictLower(K K^T))^{-1} diag(beta), W = T K and
U = T V (neither depends on S_0), U' = U - W S_0, and::

    S_end = S_0 + K^T U' = (I - K^T W) S_0 + K^T U
    Y     = Q S_0 + Mask(Q K^T) U' = (Q - Mask(Q K^T) W) S_0 + Mask(Q K^T) U

where Y (Q x P) holds the chunk's token outputs, Q its queries (Q x N), and the
mask keeps step s for token t's query when s is one of tokens 0..t's steps
(inclusive; for R = 1 the lower triangle with its diagonal).

T is formed explicitly (C x C): the values then never enter the solve. Since
V = E X, E (C x Q) the 0/1 matrix that repeats each token's value over its
factors, U = (T E) X, where T E sums T's columns over each token's factors; so
the values enter only through two matmuls per chunk, (Mask(Q K^T) T E) X, a
Q x Q block, and (K^T T E) X, an N x Q one. The computation:

1. for all chunks at once: diag(beta) K K^T, one batched unitriangular solve
   (``torch.linalg.solve_triangular``, right-hand side diag(beta): T; the
   solver reads only the strict lower triangle, and its gradient is that
   triangle's), W = T K, and from them the chunk's transition I - K^T W
   (N x N), its write K^T U = (K^T T E) X (N x P), and the effective queries
   Q - Mask(Q K^T) W (Q x N);
2. the states entering the chunks, in a loop over chunks (the only sequential
   part): S_{c+1} = (I - K_c^T W_c) S_c + K_c^T U_c, one (N x N)(N x P) matmul
   per chunk into a preallocated buffer. Its backward is written by hand
   (:class:`_Carry`): the same loop in reverse for the states' gradients, then
   the transitions' and writes' gradients of all chunks in one matmul;
3. the outputs of all chunks at once: Y_c = (Mask(Q K^T) T E)_c X_c + (effective
   queries)_c S_c, one fused matmul-add.

Why it is exact: nothing is approximated. The triangular system is the
recurrence itself rearranged (its solution is unique: unit diagonal), and the
state and output formulas are the recurrence summed; the only differences from
the per-token loop are rounding. Padding the last chunk with beta = 0 (identity
transitions, no writes), x = 0 and q = 0 leaves every real output unchanged.
Gradients are autograd's through these torch ops (the triangular solve is
differentiable) and the carry's hand-written backward, the exact derivative
of its loop; the tests compare all of them with the plain loop's.

Memory per chunk: the C x C matrices (diag(beta) K K^T, T) and the Q x C
query-key block, W (C x N), the N x N transition, the N x P write and the
entering state: O(L (Q R^2 + R N + N P / Q)) in all, never an L x L tensor.

Speed: ``chunk_size`` (tokens) = 16 is the default, the fastest measured on
CPU (one thread, L = 16384, H = 4, P = 128, N = 16) for R = 1 and R = 2 among
8 to 64: a larger chunk makes the C^2 and C^3 work grow, a smaller one the
number of small matmuls (the N x P ones are the same work at any chunk).

Bidirectional (Hydra's construction)
------------------------------------
:func:`bi_delta_chunked` forms ``shift(M_f x) + flip(shift(M_b flip x)) + D x``
with :func:`~hydra_ssm.ops.bidirectional.combine_directions` (the matrix with
:func:`~hydra_ssm.ops.bidirectional.combine_matrices`), where M_b is the causal
delta rule run over the reversed token order. The anti-causal delta rule is
the causal one on the reversed sequence: its state enters at the last token
and moves left, token j applying *its* factors r = 1..R in their own order
(only the tokens are reversed, not the factors within a token: flipping k
along L keeps each token's (R, N) block intact). So the upper triangle is::

    M[i, j] = q_b[i+1]^T A^b_{i+1} A^b_{i+2} ... A^b_{j-1} w^b_j        (j > i)

with A^b_t = H^b_{t,R} ... H^b_{t,1} and w^b_t as above from the backward
keys and strengths, and the lower one M[i, j] = q_f[i-1]^T A_{i-1} ... A_{j+1}
w_j (j < i): row i reads the forward query of the token before it and the
backward query of the token after it, as Hydra's C_f[i-1] and C_b[i+1]; the
diagonal is D. In the UT form the reversed sequence's chunk steps run
s = (L-1-t) * R + (r - 1): the system is the same unit *lower* triangular one
in reversed token order (in natural order it would be block upper triangular,
with the R x R diagonal blocks still lower triangular: factor order kept).
Both directions run as one causal scan over a batch of 2B sequences (the
forward inputs and the reversed backward ones), so the chunk loop runs once.

Arguments are checked before any computation, as the rest of ``ops`` (see
``_shapes``): shapes (``ValueError`` naming the argument and the expected shape),
floating point (``TypeError``), on x's device; mixed floating dtypes compute in
float64 if any input is float64, else float32; output in x's dtype; batch 0 or
length 0 give an empty output with gradients. beta is not checked: any real.
"""

from __future__ import annotations

import torch

from ._layout import check_chunk_size, num_chunks
from ._shapes import check_D, check_tensor, compute_dtype
from .bidirectional import combine_directions, combine_matrices

DEFAULT_CHUNK_SIZE = 16  # tokens; the fastest on CPU for R = 1 and 2 at L = 16k (see the module notes)


# ---------------------------------------------------------------- argument checks
def _check_factors(q, k, beta, b: int, l: int, h: int, device, suffix: str = "") -> tuple[int, int]:
    """q (B, L, H, N), k (B, L, H, R, N), beta (B, L, H, R) for a given (B, L, H). Returns (R, N)."""
    q_name, k_name, beta_name = "q" + suffix, "k" + suffix, "beta" + suffix
    for name, t in ((q_name, q), (k_name, k), (beta_name, beta)):
        check_tensor(t, name, device)
    if q.dim() != 4 or q.shape[:3] != (b, l, h):
        raise ValueError(f"{q_name} must have shape (batch, seqlen, nheads, dstate) with batch, seqlen, nheads = "
                         f"{(b, l, h)}, got {tuple(q.shape)}")
    n = q.shape[3]
    if k.dim() != 5 or k.shape[:3] != (b, l, h) or k.shape[4] != n or k.shape[3] < 1:
        raise ValueError(f"{k_name} must have shape (batch, seqlen, nheads, nfactors, dstate) = "
                         f"{(b, l, h, 'R >= 1', n)}, got {tuple(k.shape)}")
    r = k.shape[3]
    if beta.shape != (b, l, h, r):
        raise ValueError(f"{beta_name} must have shape (batch, seqlen, nheads, nfactors) = {(b, l, h, r)}, "
                         f"got {tuple(beta.shape)}")
    return r, n


def _check(x, q, k, beta, suffix: str = "") -> tuple[int, int, int, int]:
    """x (B, L, H, P) and its factors. Returns (B, L, H, P)."""
    check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")
    b, l, h, p = x.shape
    _check_factors(q, k, beta, b, l, h, x.device, suffix)
    return b, l, h, p


def _check_bidirectional(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D):
    b, l, h, p = _check(x, q_fwd, k_fwd, beta_fwd, "_fwd")
    _check_bwd_like_fwd(q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, x.device)
    check_D(D, b, l, h, x.device)
    return b, l, h, p


def _check_bwd_like_fwd(q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, device):
    _check_factors(q_bwd, k_bwd, beta_bwd, *q_fwd.shape[:3], device, "_bwd")
    for name, bwd, fwd in (("q_bwd", q_bwd, q_fwd), ("k_bwd", k_bwd, k_fwd), ("beta_bwd", beta_bwd, beta_fwd)):
        if bwd.shape != fwd.shape:
            raise ValueError(f"{name} must have the shape of {name[:-4]}_fwd {tuple(fwd.shape)}, "
                             f"got {tuple(bwd.shape)}")


# ---------------------------------------------------------------- references
def delta_loop(x, q, k, beta):
    """The delta rule as the plain per-token, per-factor recurrence, in float64.

    x: (B, L, H, P), q: (B, L, H, N), k: (B, L, H, R, N), beta: (B, L, H, R).
    Returns y (B, L, H, P) in x's dtype (see the module notes).
    """
    b, l, h, p = _check(x, q, k, beta)
    out_dtype = x.dtype
    x, q, k, beta = (t.double() for t in (x, q, k, beta))
    state = x.new_zeros(b, h, q.shape[-1], p)
    ys = [x[:, :0] * 0]  # the output of an empty sequence (with gradients)
    for t in range(l):
        for r in range(k.shape[3]):
            kr, br = k[:, t, :, r], beta[:, t, :, r, None, None]  # (B, H, N), (B, H, 1, 1)
            state = state - br * kr[..., None] * torch.einsum("bhn,bhnp->bhp", kr, state)[:, :, None, :] \
                + br * kr[..., None] * x[:, t, :, None, :]
        ys.append(torch.einsum("bhnp,bhn->bhp", state, q[:, t])[:, None])
    return torch.cat(ys, dim=1).to(out_dtype)


def delta_matrix(q, k, beta) -> torch.Tensor:
    """The causal delta rule's explicit matrix, (B, H, L, L)::

        M[i, j] = q_i^T A_i ... A_{j+1} w_j    (j <= i, else 0)

    with A_t = H_{t,R} ... H_{t,1}, H_{t,r} = I - beta_{t,r} k_{t,r} k_{t,r}^T, and
    w_t = sum_r H_{t,R} ... H_{t,r+1} beta_{t,r} k_{t,r}. Built by a loop over
    tokens on G (B, H, N, L), whose column j holds A_t ... A_{j+1} w_j after
    token t: each factor of token t applies H_{t,r} to every column and adds
    beta_{t,r} k_{t,r} to column t (zero before the token: after its R factors it
    is w_t); row t of M is then q_t^T G. Computed in the inputs' dtype.
    q: (B, L, H, N), k: (B, L, H, R, N), beta: (B, L, H, R).
    """
    b, l, h, n = q.shape
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), beta.dtype)
    q, k, beta = (t.to(dtype) for t in (q, k, beta))
    G = q.new_zeros(b, h, n, l)
    eye = torch.eye(l, dtype=dtype, device=q.device)
    rows = [q.new_zeros(b, h, 0, l)]
    for t in range(l):
        for r in range(k.shape[3]):
            kr, br = k[:, t, :, r], beta[:, t, :, r, None, None]  # (B, H, N), (B, H, 1, 1)
            G = G - br * kr[..., None] * torch.einsum("bhn,bhnl->bhl", kr, G)[:, :, None, :] \
                + br * kr[..., None] * eye[t]
        rows.append(torch.einsum("bhn,bhnl->bhl", q[:, t], G)[:, :, None, :])
    return torch.cat(rows, dim=2)


def delta_ref(x, q, k, beta):
    """The causal delta rule through its explicit matrix (:func:`delta_matrix`), in float64.

    x: (B, L, H, P), q: (B, L, H, N), k: (B, L, H, R, N), beta: (B, L, H, R).
    Returns (B, L, H, P) in x's dtype.
    """
    _check(x, q, k, beta)
    M = delta_matrix(q.double(), k.double(), beta.double())
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


# ---------------------------------------------------------------- chunked
def _chunk_major(t: torch.Tensor, c: int, q: int) -> torch.Tensor:
    """(B, L, H, *rest) zero-padded to L = c * Q -> (B, H, c, Q, *rest) (a view when L = c * Q)."""
    b, l, h = t.shape[:3]
    rest = t.shape[3:]
    if c * q != l:
        t = torch.cat([t, t.new_zeros(b, c * q - l, h, *rest)], dim=1)
    t = t.view(b, c, q, h, *rest)
    return t.permute(0, 3, 1, 2, *range(4, t.dim()))


def _values_by_chunk(x: torch.Tensor, c: int, q: int, with_reversed: bool) -> torch.Tensor:
    """x (B, L, H, P) -> (B, H, c, Q, P) contiguous, zero-padded to c * Q positions; with_reversed:
    (2B, H, c, Q, P), the reversed sequences after the others. Each copy is one pass over x."""
    b, l, h, p = x.shape
    out = x.new_empty((2 if with_reversed else 1) * b, h, c * q, p)
    out[:b, :, :l] = x.transpose(1, 2)
    if with_reversed:
        out[b:, :, :l] = x.flip(1).transpose(1, 2)
    out[:, :, l:] = 0
    return out.view(-1, h, c, q, p)


class _Carry(torch.autograd.Function):
    """The states entering the chunks, S_0 = 0, S_{i+1} = transition_i S_i + write_i, with its backward.

    transition (G, c, N, N), write (G, c, N, P) -> entering (G, c, N, P) (a strided view). Written by
    hand so that each step is one matmul into a preallocated chunk-major buffer, both ways: the
    backward runs the carry in reverse, g_i = dS_i + transition_i^T g_{i+1}, then d write_i = g_{i+1}
    and d transition_i = g_{i+1} S_i^T for all chunks at once (the last chunk's write is never read).
    """

    @staticmethod
    def forward(ctx, transition, write):
        g, c, n, p = write.shape
        transition = transition.transpose(0, 1).contiguous()  # (c, G, N, N)
        entering = write.new_empty(c, g, n, p)
        entering[0] = 0
        for i in range(c - 1):
            torch.baddbmm(write[:, i], transition[i], entering[i], out=entering[i + 1])
        ctx.save_for_backward(transition, entering)
        return entering.transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        transition, entering = ctx.saved_tensors  # (c, G, N, N), (c, G, N, P)
        c = entering.shape[0]
        g = torch.empty_like(entering)  # g_i: the gradient of S_i, through every later chunk
        g[c - 1] = grad[:, c - 1]
        for i in range(c - 2, -1, -1):
            torch.baddbmm(grad[:, i], transition[i].transpose(-1, -2), g[i + 1], out=g[i])
        d_write = grad.new_zeros(grad.shape)
        d_write[:, :-1] = g[1:].transpose(0, 1)
        d_transition = grad.new_zeros(transition.shape[1], c, *transition.shape[2:])
        d_transition[:, :-1] = (g[1:] @ entering[:-1].transpose(-1, -2)).transpose(0, 1)
        return d_transition, d_write


def _delta_scan(xc, q, k, beta, chunk: int) -> torch.Tensor:
    """The chunked causal delta rule (see the module notes) on inputs of one dtype, B > 0, L > 0.

    xc: (B, H, c, Q, P) the values by chunk (:func:`_values_by_chunk`), q: (B, L, H, N),
    k: (B, L, H, R, N), beta: (B, L, H, R). Returns (B, L, H, P), a strided view.
    """
    b, h, c, _, p = xc.shape
    l, r, n = k.shape[1], k.shape[3], k.shape[4]
    steps = chunk * r  # C: steps per chunk, token-major then factor
    qc = _chunk_major(q, c, chunk)  # (B, H, c, Q, N)
    kc = _chunk_major(k, c, chunk).reshape(b, h, c, steps, n)  # (B, H, c, C, N)
    bc = _chunk_major(beta, c, chunk).reshape(b, h, c, steps)  # (B, H, c, C)

    # 1. all chunks at once: T from one unitriangular solve, then what each chunk hands on and reads
    kt = kc.transpose(-1, -2)  # (B, H, c, N, C)
    # diag(beta) K K^T: the solver reads only its strict lower triangle (unit diagonal), and so does its gradient
    system = (bc.unsqueeze(-1) * kc) @ kt
    T = torch.linalg.solve_triangular(system, torch.diag_embed(bc), upper=False, unitriangular=True)  # (.., C, C)
    W = T @ kc  # (B, H, c, C, N)
    # U = T V with V each token's value repeated over its factors: U = (T summed over each token's columns) X
    TE = T if r == 1 else T.view(b, h, c, steps, chunk, r).sum(-1)  # (B, H, c, C, Q)
    reads = torch.arange(steps, device=xc.device) // r <= torch.arange(chunk, device=xc.device)[:, None]  # (Q, C)
    qk = (qc @ kt) * reads  # (B, H, c, Q, C): token t's query reads the steps of tokens <= t
    transition = torch.eye(n, dtype=xc.dtype, device=xc.device) - kt @ W  # (B, H, c, N, N): I - K^T W
    write = (kt @ TE) @ xc  # (B, H, c, N, P): K^T U
    queries = qc - qk @ W  # (B, H, c, Q, N): Q - Mask(Q K^T) W

    # 2. the states entering the chunks: the only loop
    entering = _Carry.apply(transition.reshape(b * h, c, n, n), write.reshape(b * h, c, n, p))
    entering = entering.reshape(b * h * c, n, p)

    # 3. the outputs of all chunks at once: Mask(Q K^T) U + (effective queries) S
    y = torch.baddbmm(queries.reshape(-1, chunk, n) @ entering, (qk @ TE).reshape(-1, chunk, chunk),
                      xc.reshape(-1, chunk, p))  # (B H c, Q, P)
    return y.view(b, h, c * chunk, p)[:, :, :l].transpose(1, 2)


def delta_chunked(x, q, k, beta, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """The causal delta rule, chunked (WY/UT representation; see the module notes).

    Args:
        x: (B, L, H, P) values.
        q: (B, L, H, N) queries.
        k: (B, L, H, R, N) keys, R factors per token (applied r = 1..R).
        beta: (B, L, H, R) write strengths (any real).
        chunk_size: tokens per chunk (any positive integer; any L is accepted).

    Returns y (B, L, H, P), y_t = S_t^T q_t after all of token t's factors. Computed
    in float32 (float64 if any input is float64); output in x's dtype. O(L) memory.
    """
    b, l, h, p = _check(x, q, k, beta)
    chunk_size = check_chunk_size(chunk_size)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return delta_ref(x, q, k, beta)
    cdt = compute_dtype(x, q, k, beta)
    chunk = min(chunk_size, l)
    xc = _values_by_chunk(x.to(cdt), num_chunks(l, chunk), chunk, with_reversed=False)
    y = _delta_scan(xc, *(t.to(cdt) for t in (q, k, beta)), chunk)
    return y.to(x.dtype).contiguous()


# ---------------------------------------------------------------- bidirectional
def _flip(t: torch.Tensor) -> torch.Tensor:
    """Reverse the token order (dim 1); a token's factors keep their order."""
    return t.flip(1)


def bi_delta_matrix(q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D=None) -> torch.Tensor:
    """The bidirectional delta rule's explicit (B, H, L, L) matrix (Hydra's construction)::

        M[i, j] = q_f[i-1]^T A_{i-1} ... A_{j+1} w_j             (j < i)
        M[i, j] = q_b[i+1]^T A^b_{i+1} ... A^b_{j-1} w^b_j       (j > i)
        M[i, i] = D[i]                                           (0 if D is None)

    (A, w of each direction as in :func:`delta_matrix`, token j's factors applied
    r = 1..R in both directions). q_*: (B, L, H, N), k_*: (B, L, H, R, N),
    beta_*: (B, L, H, R), given in natural order; D: None, (H,) or (B, L, H).
    """
    check_tensor(q_fwd, "q_fwd")
    if q_fwd.dim() != 4:
        raise ValueError(f"q_fwd must have shape (batch, seqlen, nheads, dstate), got {tuple(q_fwd.shape)}")
    b, l, h, _ = q_fwd.shape
    _check_factors(q_fwd, k_fwd, beta_fwd, b, l, h, q_fwd.device, "_fwd")
    _check_bwd_like_fwd(q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, q_fwd.device)
    check_D(D, b, l, h, q_fwd.device)
    fwd = delta_matrix(q_fwd, k_fwd, beta_fwd)
    rev = delta_matrix(_flip(q_bwd), _flip(k_bwd), _flip(beta_bwd))
    return combine_matrices(fwd, rev, D)


def bi_delta_ref(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D=None):
    """The bidirectional delta rule through its explicit matrix (:func:`bi_delta_matrix`), in float64.

    Arguments as :func:`bi_delta_chunked`. Returns (B, L, H, P) in x's dtype.
    """
    _check_bidirectional(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D)
    M = bi_delta_matrix(*(t.double() for t in (q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd)),
                        None if D is None else D.double())
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def bi_delta_chunked(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D=None,
                     chunk_size: int = DEFAULT_CHUNK_SIZE):
    """The bidirectional delta rule: ``shift(M_f x) + flip(shift(M_b flip x)) + D * x``.

    Args:
        x: (B, L, H, P) values.
        q_fwd, q_bwd: (B, L, H, N) queries of the two directions.
        k_fwd, k_bwd: (B, L, H, R, N) keys (R factors per token).
        beta_fwd, beta_bwd: (B, L, H, R) write strengths.
        D: None, (H,) or (B, L, H): the diagonal.
        chunk_size: tokens per chunk.

    The backward tensors are given in natural order: the backward direction runs
    over the tokens right to left, each token applying its factors r = 1..R. Both
    directions run as one chunked causal scan over 2B sequences (the backward
    ones reversed), combined by :func:`~hydra_ssm.ops.bidirectional.combine_directions`.
    Computed in float32 (float64 if any input is float64); output in x's dtype.
    """
    b, l, h, p = _check_bidirectional(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D)
    chunk_size = check_chunk_size(chunk_size)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return bi_delta_ref(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D)
    cdt = compute_dtype(x, q_fwd, k_fwd, beta_fwd, q_bwd, k_bwd, beta_bwd, D)
    xf = x.to(cdt)
    chunk = min(chunk_size, l)
    xc = _values_by_chunk(xf, num_chunks(l, chunk), chunk, with_reversed=True)
    both = [torch.cat([fwd.to(cdt), _flip(bwd.to(cdt))]) for fwd, bwd in
            ((q_fwd, q_bwd), (k_fwd, k_bwd), (beta_fwd, beta_bwd))]
    y = _delta_scan(xc, *both, chunk)
    y_fwd, y_bwd_reversed = y.split(b)  # (split, not two slices: its gradient is one concatenation)
    return combine_directions(y_fwd, y_bwd_reversed, xf, None if D is None else D.to(cdt)).to(x.dtype)
