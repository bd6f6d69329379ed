"""Diagonal-gated linear recurrences (gated linear attention, complex or signed diagonal SSMs).

Per batch and head, a state S (N x P) is carried along the sequence with a
decay of its own for every state dimension n::

    a_t = exp(log_decay_t + i * phase_t)      (real exp(log_decay_t) when phase is None)
    S_t = diag(a_t) S_{t-1} + k_t x_t^T
    y_t = Re(q_t^T S_t)                       (q_t^T: no conjugation)

that is, with G_t = sum_{m<=t} (log_decay_m + i phase_m)::

    y_i = sum_{j<=i} M[i, j] x_j,   M[i, j] = Re sum_n q_in k_jn exp(G_in - G_jn)

Layout: x (B, L, H, P); q, k, log_decay, phase (B, L, H, N); log_decay <= 0
(checked: |a| <= 1), phase any real angle. q may be complex when phase is
given; k is real. With one state dimension, or log_decay equal across n and no
phase, this is Mamba-2's scalar decay (q = C, k = B * dt, log_decay = dt * A).

:func:`gated_matrix` builds M explicitly, :func:`gated_ref` applies it (float64)
and :func:`gated_loop` runs the recurrence token by token: the references.
:func:`gated_chunked` is the fast path; the bidirectional forms
(``bi_gated_*``) are Hydra's construction (``bidirectional.py``) over two
causal ones.

The chunked scan
----------------

The sequence is cut into chunks of Q positions (the last one zero-padded:
padded positions have k = 0 and log_decay = 0, so they add nothing and decay
nothing), and every chunk into sub-chunks of ``_SUB_CHUNK`` = 8. Inside a
chunk, G is the cumulative log decay from the chunk start (inclusive), so Re G
is <= 0 and non-increasing. Every exponential taken is of a difference
``G_later - G_earlier`` (or of G itself), whose real part is <= 0, with one
bounded exception (below): nothing overflows for any length or decay, and a
huge decay (log_decay = -1e4) underflows to an exact 0. Pairs that must not
meet are masked to -inf *before* the exponential, so no inf ever meets a 0
(values and gradients stay finite).

1. inside a chunk, the scores ``Re sum_n q_in k_jn exp(G_in - G_jn)`` (j <= i),
   then one matmul with x. The queries of sub-chunk u meet the keys through
   the point R_u where u starts: ``(q_i exp(G_i - R_u)) . (k_j exp(R_u - G_j))``,
   one (sub x N) @ (N x Q) matmul per sub-chunk. For keys before R_u both
   exponents are <= 0 (exact, stable). For keys inside u, R_u - G_j >= 0 but at
   most the sub-chunk's own decay; when that is below ``_FACTOR_LIMIT`` (64 in
   float32, 512 in float64) in every sub-chunk, these pairs take the same
   matmul (factors below e^64 and above e^-64: finite and normal numbers; the
   unwanted upper triangle is set to 0 after the matmul). Otherwise (a decay
   that large already underflows the pairs it separates) they use an explicit
   (sub, sub, N) factor exp(G_i - G_j), masked before the exponential;
2. what a chunk hands on: ``dS = sum_j (k_j * exp(G_end - G_j)) x_j^T`` (N x P);
3. the carry, a loop over chunks in place (``_Carry``, with its own backward
   loop): ``S_{c+1} = exp(G_end) * S_c + dS_c`` (S_0 = 0), keeping the state
   entering every chunk;
4. the entering states read out for all chunks at once:
   ``y_i += Re((q_i * exp(G_i))^T S_c)``.

Precision of the log decays: G is summed in float64. In a float32 computation
it is rounded to float32 unless some chunk's total decay exceeds 256 in
magnitude: a difference of two large float32 sums would lose the small
difference between them (absolute error 2^-24 |G|), so G then stays in float64
and only the exponentials are rounded. The two choices (float32 G, factored
scores) are read in one host synchronisation; while tracing, none: G in float64
and the explicit factor, exact for any input.

Cost and memory per chunk and head: the keys seen from every sub-chunk
(Q/sub, Q, N) and the Q x Q scores (plus the (sub, sub, N) factors on the
explicit path), and the N x P states: O(L (Q N / sub + Q + N P / Q)) per
head over the whole sequence, nothing L x L. Gradients are autograd's through these torch
operations (the same masked exponentials), except the carry's, written out in
``_Carry``. The bidirectional scan runs both directions as one causal scan
(the backward one reversed, as extra heads).

Default chunk of 32: fastest measured (bi_gated_chunked fwd+bwd, L = 16384,
H = 4, P = 128, N = 16, float32, one thread: 16 and 32 alike, 64 about 1.5x
slower); larger chunks pay Q/sub keys per position, smaller ones more carry
steps and smaller matmuls.

Arguments are checked before any computation, as for the other scans
(``_shapes``): shapes (``ValueError`` naming the argument), real floating
dtypes (``TypeError``; q may be complex only when phase is given),
log_decay <= 0 (``ValueError``; one host synchronisation: a value check, by
default on CPU tensors only, see ``hydra_ssm.set_validation``). Floating dtypes may be mixed: the work is done in float64 if any input
is float64 (or complex128), else in float32 (complex64 with phase); the output
has x's dtype. Batch 0 or length 0 give an empty output, with gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._checks import tracing, value_checks_enabled
from ._layout import check_chunk_size, from_chunks, to_chunks
from ._shapes import check_D, check_tensor
from .bidirectional import combine_directions, combine_matrices

# Largest |total log decay| of a chunk for which float32 log decays are exact enough
# (absolute error ~ 2^-24 * 256 = 1.5e-5 in an exponent), as in ``chunked.py``.
_FLOAT32_LOG_DECAY_LIMIT = 256.0

# Positions per sub-chunk (see ``_chunk_scores``).
_SUB_CHUNK = 8

# Largest decay |sum of log_decay| of a sub-chunk for which the factored scores are used: their factors
# reach exp(limit) (float32: 6e27 of 3e38; float64: 1e222 of 1.8e308) and exp(-limit) stays a normal number.
_FACTOR_LIMIT = {torch.float32: 64.0, torch.float64: 512.0}


# ---------------------------------------------------------------- checks
def _check_q(q, name: str, device, complex_ok: bool) -> None:
    if isinstance(q, torch.Tensor) and q.is_complex():
        if not complex_ok:
            raise ValueError(f"{name} may be complex only when the phase is given (a complex decay); "
                             f"got a {q.dtype} {name} without phase")
        if q.device != device:
            raise ValueError(f"{name} must be on x's device {device}, got {q.device}")
        return
    check_tensor(q, name, device)


def _check_direction(x, q, k, log_decay, phase, suffix: str = "") -> tuple[int, int, int, int, int]:
    """Shapes, types and devices of one direction's q, k, log_decay, phase (x already checked).

    ``suffix`` is appended to the names in messages ("_fwd" -> "q_fwd"). Returns (B, L, H, P, N).
    """
    b, l, h, p = x.shape
    _check_q(q, "q" + suffix, x.device, complex_ok=phase is not None)
    for name, t in (("k", k), ("log_decay", log_decay), ("phase", phase)):
        if t is not None:
            check_tensor(t, name + suffix, x.device)
    if q.dim() != 4 or q.shape[:3] != (b, l, h):
        raise ValueError(f"q{suffix} must have shape (batch, seqlen, nheads, dstate) with (batch, seqlen, nheads) = "
                         f"{(b, l, h)}, got {tuple(q.shape)}")
    n = q.shape[3]
    for name, t in (("k", k), ("log_decay", log_decay), ("phase", phase)):
        if t is not None and t.shape != q.shape:
            raise ValueError(f"{name}{suffix} must have the shape of q{suffix} (batch, seqlen, nheads, dstate) = "
                             f"{tuple(q.shape)}, got {tuple(t.shape)}")
    return b, l, h, p, n


def _check_x(x) -> None:
    check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, seqlen, nheads, headdim), got {tuple(x.shape)}")


def _check_log_decays(**log_decays: torch.Tensor) -> None:
    """Every log_decay <= 0, with one host synchronisation for all of them; a value check (run as
    ``value_checks_enabled`` in ``hydra_ssm._checks`` says: by default on CPU tensors only)."""
    checked = {name: t for name, t in log_decays.items() if value_checks_enabled(t)}
    if not checked:
        return
    positive = torch.stack([(t > 0).any() for t in checked.values()]).tolist()
    for (name, t), bad in zip(checked.items(), positive):
        if bad:
            raise ValueError(f"{name} must be <= 0 (the log of a decay magnitude |a| <= 1), "
                             f"got a maximum of {float(t.detach().max()):.6g}")


def _check(x, q, k, log_decay, phase) -> tuple[int, int, int, int, int]:
    _check_x(x)
    sizes = _check_direction(x, q, k, log_decay, phase)
    _check_log_decays(log_decay=log_decay)
    return sizes


def _check_bidirectional(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D, phase_fwd, phase_bwd):
    _check_x(x)
    sizes = _check_direction(x, q_fwd, k_fwd, log_decay_fwd, phase_fwd, "_fwd")
    if isinstance(q_bwd, torch.Tensor) and q_bwd.shape != q_fwd.shape:
        raise ValueError(f"q_bwd must have the shape of q_fwd {tuple(q_fwd.shape)}, got {tuple(q_bwd.shape)}")
    _check_direction(x, q_bwd, k_bwd, log_decay_bwd, phase_bwd, "_bwd")
    b, l, h = sizes[:3]
    check_D(D, b, l, h, x.device)
    _check_log_decays(log_decay_fwd=log_decay_fwd, log_decay_bwd=log_decay_bwd)
    return sizes


def _real_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64 or complex128, else float32 (``_shapes.compute_dtype`` with complex q)."""
    wide = (torch.float64, torch.complex128)
    return torch.float64 if any(t is not None and t.dtype in wide for t in tensors) else torch.float32


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _cast(dtype, q, k, log_decay, phase):
    """q (complex when phase is given), k, log_decay, phase in the compute dtype ``dtype`` (real)."""
    q = q.to(_complex_of(dtype) if phase is not None else dtype)
    return q, k.to(dtype), log_decay.to(dtype), None if phase is None else phase.to(dtype)


# ---------------------------------------------------------------- references
def _exp_masked(re: torch.Tensor, im: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """exp(re + i im) where ``keep``, exactly 0 elsewhere (masked to -inf before the exponential)."""
    magnitude = torch.exp(re.masked_fill(~keep, float("-inf")))
    if im is None:
        return magnitude
    return torch.polar(magnitude, im.masked_fill(~keep, 0.0))


def gated_matrix(q, k, log_decay, phase=None) -> torch.Tensor:
    """The causal matrix (B, H, L, L) in the inputs' (real) dtype::

        M[i, j] = Re sum_n q_in k_jn exp(G_in - G_jn)   for j <= i, else 0

    with G the cumulative sum of log_decay + i phase along L. q, k, log_decay,
    phase: (B, L, H, N). The formula is applied to whatever is given (not checked).
    """
    length = q.shape[1]
    cs = torch.cumsum(log_decay, dim=1).permute(0, 2, 1, 3)  # (B, H, L, N)
    keep = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()[:, :, None]
    re = cs[:, :, :, None] - cs[:, :, None]  # (B, H, L, L, N): sum over j+1 .. i
    im = None
    if phase is not None:
        ps = torch.cumsum(phase, dim=1).permute(0, 2, 1, 3)
        im = ps[:, :, :, None] - ps[:, :, None]
    decay = _exp_masked(re, im, keep)
    M = torch.einsum("bihn,bjhn,bhijn->bhij", q.to(decay.dtype), k.to(decay.dtype), decay)
    return M.real if M.is_complex() else M


def gated_ref(x, q, k, log_decay, phase=None) -> torch.Tensor:
    """The causal gated recurrence applied through its explicit matrix (float64); x (B, L, H, P) -> (B, L, H, P)."""
    _check(x, q, k, log_decay, phase)
    q, k, log_decay, phase = _cast(torch.float64, q, k, log_decay, phase)
    M = gated_matrix(q, k, log_decay, phase)
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def gated_loop(x, q, k, log_decay, phase=None) -> torch.Tensor:
    """The causal gated recurrence token by token (float64); x (B, L, H, P) -> (B, L, H, P)."""
    b, l, h, p, n = _check(x, q, k, log_decay, phase)
    q, k, log_decay, phase = _cast(torch.float64, q, k, log_decay, phase)
    xd = x.double()
    state = xd.new_zeros(b, h, n, p, dtype=q.dtype)
    ys = [xd.new_zeros(b, 0, h, p)]  # the output of an empty sequence
    for t in range(l):
        a = torch.exp(log_decay[:, t])  # (B, H, N)
        if phase is not None:
            a = torch.polar(a, phase[:, t])
        state = a[..., None] * state + k[:, t, :, :, None] * xd[:, t, :, None, :]
        y = torch.einsum("bhn,bhnp->bhp", q[:, t], state)
        ys.append((y.real if y.is_complex() else y)[:, None])
    return torch.cat(ys, dim=1).to(x.dtype)


# ---------------------------------------------------------------- chunked
class ChunkLogDecays(NamedTuple):
    """Cumulative log decays inside every chunk (see :func:`_chunk_log_decays`)."""

    G: torch.Tensor  # (c, B, H, Q, N) real part: float64, or the compute dtype where that is exact enough
    Phi: torch.Tensor | None  # (c, B, H, Q, N) cumulative phase, or None
    factored: bool  # every sub-chunk's decay is small enough for the factored scores


def _chunk_log_decays(log_decay, phase, q_len: int, sub: int, dtype: torch.dtype) -> ChunkLogDecays:
    """G and Phi summed from each chunk's start, and the two choices they allow (module notes): float32 G
    (every chunk's total decay <= 256) and factored scores (every sub-chunk's <= the factor limit). Both
    read in one host synchronisation; while tracing, the choices that are exact for any input."""
    G = torch.cumsum(to_chunks(log_decay.double(), q_len), dim=3)
    ends = G[:, :, :, sub - 1::sub]  # (c, B, H, U, N): G at the end of every sub-chunk
    sub_decay = torch.cat([ends[:, :, :, :1], ends[:, :, :, 1:] - ends[:, :, :, :-1]], dim=3)  # <= 0
    if tracing():
        largest_chunk, largest_sub = float("inf"), float("inf")
    else:
        largest_chunk, largest_sub = torch.stack([-G[:, :, :, -1].min(), -sub_decay.min()]).tolist()
    if dtype != torch.float64 and largest_chunk <= _FLOAT32_LOG_DECAY_LIMIT:  # NaN: kept in float64
        G = G.to(dtype)
    Phi = None if phase is None else torch.cumsum(to_chunks(phase, q_len), dim=3)
    return ChunkLogDecays(G, Phi, largest_sub <= _FACTOR_LIMIT[dtype])


def _exp(re: torch.Tensor, im: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """exp(re + i im) in ``dtype`` (complex of it when im is given); re may be wider than ``dtype``."""
    magnitude = torch.exp(re).to(dtype)
    return magnitude if im is None else torch.polar(magnitude, im)


class _Carry(torch.autograd.Function):
    """The states entering every chunk: S_0 = 0, S_{c+1} = a_c * S_c + dS_c.

    a: (c, B, H, N, 1) decays across the chunks, dS: (c, B, H, N, P) what each chunk adds (real or complex).
    Returns S (c, B, H, N, P). A loop over chunks in place, forward and backward, instead of a graph of
    two nodes per chunk. Backward (a loop from the last chunk), with g the gradient of S and h_c that of
    the state S_c through all its uses (h_c = 0 past the last chunk)::

        h_c = g_c + conj(a_c) h_{c+1},   d dS_c = h_{c+1},   d a_c = sum_p h_{c+1} conj(S_c)
    """

    @staticmethod
    def forward(ctx, a, dS):
        S = torch.empty_like(dS)
        S[0] = 0
        for c in range(dS.shape[0] - 1):
            torch.addcmul(dS[c], a[c], S[c], out=S[c + 1])
        ctx.save_for_backward(a, S)
        return S

    @staticmethod
    def backward(ctx, g):
        a, S = ctx.saved_tensors
        a_conj = a.conj()
        g_dS = torch.empty_like(S)  # g_dS[c] = h_{c+1}
        g_dS[-1] = 0  # the state leaving the last chunk is not used
        for c in range(S.shape[0] - 1, 0, -1):
            torch.addcmul(g[c], a_conj[c], g_dS[c], out=g_dS[c - 1])
        g_a = (g_dS * S.conj()).sum(-1, keepdim=True)
        return g_a, g_dS


def _real(t: torch.Tensor) -> torch.Tensor:
    return t.real if t.is_complex() else t


def _chunk_scores(G, Phi, q, k, sub: int, dtype: torch.dtype, factored: bool) -> torch.Tensor:
    """Scores inside every chunk, (c, B, H, Q, Q): Re sum_n q_in k_jn exp(G_in - G_jn) for j <= i, else 0.

    G, Phi (phase or None), q, k: (c, B, H, Q, N), Q a multiple of ``sub``. Queries of sub-chunk u (of
    ``sub`` positions) meet the keys through the point R_u where the sub-chunk starts (the end of
    sub-chunk u - 1; the chunk start for u = 0): (q_i exp(G_i - R_u)) . (k_j exp(R_u - G_j)), one matmul
    per sub-chunk. For keys before R_u both exponents are <= 0. For keys inside sub-chunk u the second is
    >= 0, at most the sub-chunk's decay: ``factored`` says it is below ``_FACTOR_LIMIT`` everywhere, and
    those pairs go through the same matmul; otherwise they use an explicit (sub, sub, N) factor
    exp(G_i - G_j), masked to j <= i before the exponential, exact for any decay.
    """
    c, b, h, Q, n = G.shape
    U = Q // sub
    Gs, qs, ks = (t.view(c, b, h, U, sub, n) for t in (G, q, k))
    Phis = None if Phi is None else Phi.view(c, b, h, U, sub, n)
    R = F.pad(Gs[..., :-1, -1, :], (0, 0, 1, 0))  # (c, B, H, U, N)
    Ri = None if Phis is None else F.pad(Phis[..., :-1, -1, :], (0, 0, 1, 0))
    q_in = qs * _exp(Gs - R.unsqueeze(-2), None if Phis is None else Phis - Ri.unsqueeze(-2), dtype)
    positions = torch.arange(Q, device=G.device)
    # keys read by sub-chunk u: those before it, and (factored) those inside it
    reach = positions[::sub, None] + (sub if factored else 0)  # (U, 1)
    re = (R.unsqueeze(-2) - G.unsqueeze(3)).masked_fill(~(positions < reach)[..., None], float("-inf"))
    im = None if Phis is None else Ri.unsqueeze(-2) - Phi.unsqueeze(3)
    k_out = k.unsqueeze(3) * _exp(re, im, dtype)  # (c, B, H, U, Q, N)
    scores = _real(torch.matmul(q_in, k_out.transpose(-1, -2))).view(c, b, h, Q, Q)
    lower = torch.ones(Q, Q, dtype=torch.bool, device=G.device).tril()
    if factored:  # the upper triangle of the diagonal blocks is finite but not wanted
        return scores.masked_fill(~lower, 0.0)
    # pairs inside one sub-chunk: decay[i, j] = exp(G_i - G_j), masked to j <= i before the exponential
    keep = lower[:sub, :sub, None]
    re = (Gs.unsqueeze(-2) - Gs.unsqueeze(-3)).masked_fill(~keep, float("-inf"))
    im = None if Phis is None else Phis.unsqueeze(-2) - Phis.unsqueeze(-3)  # finite; the magnitude is 0 above
    decay = _exp(re, im, dtype)  # (c, B, H, U, sub, sub, N)
    inner = _real(torch.matmul(decay * ks.unsqueeze(-3), qs.unsqueeze(-1)).squeeze(-1))  # (c, B, H, U, sub, sub)
    eye = torch.eye(U, dtype=inner.dtype, device=G.device)[:, None, :, None]  # (U, 1, U, 1)
    return scores + (inner.unsqueeze(-2) * eye).view(c, b, h, Q, Q)  # plus the diagonal blocks


def _causal_chunked(x, q, k, log_decay, phase, chunk_size: int) -> torch.Tensor:
    """The causal scan on checked, cast inputs (module notes); returns (B, L, H, P) in x's dtype."""
    l = x.shape[1]
    dtype = x.dtype
    Q = min(chunk_size, l)
    if chunk_size % _SUB_CHUNK == 0:  # a short sequence: one chunk, padded to whole sub-chunks
        Q = -(-Q // _SUB_CHUNK) * _SUB_CHUNK
    sub = _SUB_CHUNK if Q % _SUB_CHUNK == 0 else Q
    G, Phi, factored = _chunk_log_decays(log_decay, phase, Q, sub, dtype)  # (c, B, H, Q, N)
    xc, qc, kc = (to_chunks(t, Q) for t in (x, q, k))  # (c, B, H, Q, P | N)

    # 1. inside the chunks
    scores = _chunk_scores(G, Phi, qc, kc, sub, dtype, factored)  # (c, B, H, Q, Q)
    y = torch.matmul(scores, xc)  # (c, B, H, Q, P)

    # 2. what each chunk hands on
    G_end = G[:, :, :, -1:]  # (c, B, H, 1, N)
    Phi_end = None if Phi is None else Phi[:, :, :, -1:]
    k_dec = kc * _exp(G_end - G, None if Phi is None else Phi_end - Phi, dtype)
    dS = torch.matmul(k_dec.transpose(-1, -2), xc.to(k_dec.dtype))  # (c, B, H, N, P)

    # 3. the carry across chunks, keeping the state entering each
    across = _exp(G_end, Phi_end, dtype).squeeze(-2).unsqueeze(-1)  # (c, B, H, N, 1)
    S = _Carry.apply(across, dS)  # (c, B, H, N, P)

    # 4. the entering states read out
    q_dec = qc * _exp(G, Phi, dtype)
    y_state = torch.matmul(q_dec, S)
    y = y + (y_state.real if y_state.is_complex() else y_state)
    return from_chunks(y, l)


def gated_chunked(x, q, k, log_decay, phase=None, chunk_size: int = 32) -> torch.Tensor:
    """The causal gated recurrence by chunks (see the module notes); exact, O(L) memory.

    Args:
        x: (B, L, H, P) values.
        q: (B, L, H, N) queries (complex allowed when phase is given).
        k: (B, L, H, N) keys.
        log_decay: (B, L, H, N) log of the decay magnitude, <= 0 (checked).
        phase: None or (B, L, H, N) angle of the decay.
        chunk_size: positions per chunk; any L is accepted.

    Returns (B, L, H, P) in x's dtype.
    """
    check_chunk_size(chunk_size)
    b, l, h, p, n = _check(x, q, k, log_decay, phase)
    if b == 0 or l == 0:  # nothing to scan; the reference gives the empty output and zero gradients
        return gated_ref(x, q, k, log_decay, phase)
    dtype = _real_dtype(x, q, k, log_decay, phase)
    q, k, log_decay, phase = _cast(dtype, q, k, log_decay, phase)
    return _causal_chunked(x.to(dtype), q, k, log_decay, phase, chunk_size).to(x.dtype)


# ---------------------------------------------------------------- bidirectional
def bi_gated_matrix(q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D=None, phase_fwd=None,
                    phase_bwd=None) -> torch.Tensor:
    """Hydra's construction over two causal gated matrices, (B, H, L, L)::

        M[i, j] = M_f[i-1, j]                  (j < i; M_f: gated_matrix of the forward inputs)
        M[i, j] = M_b'[L-2-i, L-1-j]           (j > i; M_b': gated_matrix of the flipped backward inputs)
        M[i, i] = D[i]                          (0 if D is None)

    The backward inputs are given in natural order (flipped here). Not checked.
    """
    b, l, h = q_fwd.shape[:3]
    flip = (lambda t: None if t is None else t.flip(1))  # noqa: E731
    fwd = gated_matrix(q_fwd, k_fwd, log_decay_fwd, phase_fwd)
    rev = gated_matrix(flip(q_bwd), flip(k_bwd), flip(log_decay_bwd), flip(phase_bwd))
    return combine_matrices(fwd, rev, check_D(D, b, l, h))


def bi_gated_ref(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D=None, phase_fwd=None,
                 phase_bwd=None) -> torch.Tensor:
    """The bidirectional gated mixer through its explicit matrix (float64); x (B, L, H, P) -> (B, L, H, P)."""
    _check_bidirectional(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D, phase_fwd, phase_bwd)
    fwd = _cast(torch.float64, q_fwd, k_fwd, log_decay_fwd, phase_fwd)
    bwd = _cast(torch.float64, q_bwd, k_bwd, log_decay_bwd, phase_bwd)
    M = bi_gated_matrix(*fwd[:3], *bwd[:3], None if D is None else D.double(), fwd[3], bwd[3])
    return torch.einsum("bhij,bjhp->bihp", M, x.double()).to(x.dtype)


def bi_gated_chunked(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D=None, phase_fwd=None,
                     phase_bwd=None, chunk_size: int = 32) -> torch.Tensor:
    """The bidirectional gated mixer ``shift(causal_f(x)) + flip(shift(causal_b(flip x))) + D * x`` by chunks.

    Args:
        x: (B, L, H, P) values.
        q_fwd, k_fwd, log_decay_fwd, phase_fwd: the forward direction (as :func:`gated_chunked`).
        q_bwd, k_bwd, log_decay_bwd, phase_bwd: the backward direction, in natural (unflipped) order.
        D: None, (H,) or (B, L, H): the diagonal.
        chunk_size: positions per chunk.

    Both directions run in one scan (the backward one reversed, as extra heads).
    Returns (B, L, H, P) in x's dtype.
    """
    check_chunk_size(chunk_size)
    b, l, h, p, n = _check_bidirectional(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D,
                                         phase_fwd, phase_bwd)
    if b == 0 or l == 0:
        return bi_gated_ref(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D, phase_fwd, phase_bwd)
    dtype = _real_dtype(x, q_fwd, k_fwd, log_decay_fwd, q_bwd, k_bwd, log_decay_bwd, D, phase_fwd, phase_bwd)
    if (phase_fwd is None) != (phase_bwd is None):  # one direction rotates: the other one's angle is 0
        phase_fwd = torch.zeros_like(log_decay_fwd) if phase_fwd is None else phase_fwd
        phase_bwd = torch.zeros_like(log_decay_bwd) if phase_bwd is None else phase_bwd
    fwd = _cast(dtype, q_fwd, k_fwd, log_decay_fwd, phase_fwd)
    bwd = _cast(dtype, q_bwd, k_bwd, log_decay_bwd, phase_bwd)
    xc = x.to(dtype)
    # the backward direction reversed, as heads H .. 2H-1 of one causal scan
    both = [None if f is None else torch.cat([f, r.flip(1)], dim=2) for f, r in zip((xc,) + fwd, (xc,) + bwd)]
    y = _causal_chunked(*both, chunk_size)
    y = combine_directions(y[:, :, :h], y[:, :, h:], xc, None if D is None else D.to(dtype))
    return y.to(x.dtype)
