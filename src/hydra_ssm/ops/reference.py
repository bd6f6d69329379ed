"""Obviously-correct references: explicit L x L matrices and per-token loops.

They are quadratic (or sequential) and meant for tests and for
``materialize()``; the fast paths live in ``semiseparable.py`` and
``quasiseparable.py``.

Layout: x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N); states
(B, H, P, N). Head h uses group h // (H / G). Arguments are checked as by the
fast paths (see ``_shapes``), so a reference accepts exactly what they accept;
the ``*_matrix`` builders apply their formula to whatever they are given.
"""

from __future__ import annotations

import torch

from ._layout import sequence_slices
from .bidirectional import combine_matrices
from ._shapes import (check_cu_seqlens, check_D, check_hydra_args, check_ssm_args, check_state, check_step_sizes,
                      expand_groups)


def _log_decay_between(log_a: torch.Tensor) -> torch.Tensor:
    """seg[b, h, i, j] = sum_{k=j+1..i} log_a[b, k, h] for j <= i, -inf above the diagonal.

    log_a: (B, L, H). Returns (B, H, L, L).
    """
    cs = torch.cumsum(log_a, dim=1).transpose(1, 2)  # (B, H, L)
    seg = cs[..., :, None] - cs[..., None, :]
    length = log_a.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=log_a.device).tril()
    return seg.masked_fill(~lower, float("-inf"))


def semiseparable_matrix(dt, A, B, C) -> torch.Tensor:
    """The causal SSD (Mamba-2) matrix, (B, H, L, L)::

        M[i, j] = C_i . B_j * dt_j * prod_{k=j+1..i} exp(dt_k A)   for j <= i, else 0
    """
    nheads = dt.shape[-1]
    Bh = expand_groups(B, nheads)
    Ch = expand_groups(C, nheads)
    cb = torch.einsum("bihn,bjhn->bhij", Ch, Bh)
    decay = torch.exp(_log_decay_between(dt * A))
    return cb * decay * dt.transpose(1, 2)[:, :, None, :]


def semiseparable_ref(x, dt, A, B, C, initial_states=None, return_final_states=False, cu_seqlens=None):
    """Causal SSD applied through its explicit matrix; computed in float64.

    ``cu_seqlens``: the (n + 1,) offsets of a packed batch (B = 1): each sequence is
    run alone (a plain loop), the initial state entering every one; the final states
    are then one per sequence, (n, H, P, N) (an empty sequence's: its initial state).
    """
    b, l, h, p, g, n = check_ssm_args(x, dt, A, B, C)
    initial_states = check_state(initial_states, b, h, p, n, "initial_states", x.device)
    check_step_sizes(dt=dt)
    if cu_seqlens is not None:
        parts = [semiseparable_ref(x[:, s], dt[:, s], A, B[:, s], C[:, s], initial_states, True)
                 for s in sequence_slices(check_cu_seqlens(cu_seqlens, b, l))]
        if not parts:  # no sequence: the empty output, and no final state
            y, final = semiseparable_ref(x, dt, A, B, C, initial_states, True)
            return (y, final[:0]) if return_final_states else y
        y = torch.cat([part[0] for part in parts], 1)
        return (y, torch.cat([part[1] for part in parts])) if return_final_states else y
    out_dtype = x.dtype
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    M = semiseparable_matrix(dt, A, B, C)
    y = torch.einsum("bhij,bjhp->bihp", M, x)
    log_a = dt * A  # (B, L, H)
    cs = torch.cumsum(log_a, dim=1)  # decay from the start through position i
    if initial_states is not None:
        s0 = initial_states.double()
        y = y + torch.exp(cs)[..., None] * torch.einsum("bihn,bhpn->bihp", expand_groups(C, h), s0)
    if not return_final_states:
        return y.to(out_dtype)
    # final[p, n] = sum_j exp(total - cs_j) dt_j x_j B_j^T (+ exp(total) s0)
    total = log_a.sum(1)  # (B, H); 0 for an empty sequence
    w = torch.exp(total[:, None] - cs) * dt  # (B, L, H)
    final = torch.einsum("bjh,bjhp,bjhn->bhpn", w, x, expand_groups(B, h))
    if initial_states is not None:
        final = final + torch.exp(total)[..., None, None] * initial_states.double()
    return y.to(out_dtype), final.to(out_dtype)


def semiseparable_loop(x, dt, A, B, C, initial_states=None):
    """The causal SSD as a plain per-token recurrence (float64). Returns (y, final_state)."""
    b, l, h, p, g, n = check_ssm_args(x, dt, A, B, C)
    initial_states = check_state(initial_states, b, h, p, n, "initial_states", x.device)
    check_step_sizes(dt=dt)
    out_dtype = x.dtype
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    Bh, Ch = expand_groups(B, h), expand_groups(C, h)
    state = x.new_zeros(b, h, p, n) if initial_states is None else initial_states.double().clone()
    ys = [x.new_zeros(b, 0, h, p)]  # the output of an empty sequence
    for t in range(l):
        a = torch.exp(dt[:, t] * A)  # (B, H)
        state = a[..., None, None] * state + (dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])[:, None])
    return torch.cat(ys, dim=1).to(out_dtype), state.to(out_dtype)


def quasiseparable_matrix(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None) -> torch.Tensor:
    """Hydra's quasiseparable matrix, (B, H, L, L)::

        Q[i, j] = C_f[i-1] . B_f[j] dt_f[j] prod_{k=j+1..i-1} a_f[k]   (j < i)
        Q[i, j] = C_b[i+1] . B_b[j] dt_b[j] prod_{k=i+1..j-1} a_b[k]   (j > i)
        Q[i, i] = D[i]                                                  (0 if D is None)

    with a_f[k] = exp(dt_f[k] A), a_b[k] = exp(dt_b[k] A).
    """
    b, l, h = dt_fwd.shape
    # The causal SSD matrix of each direction (the backward one on the reversed sequence), combined.
    flip = lambda t: t.flip(1)  # noqa: E731
    fwd = semiseparable_matrix(dt_fwd, A, B_fwd, C_fwd)
    rev = semiseparable_matrix(flip(dt_bwd), A, flip(B_bwd), flip(C_bwd))
    return combine_matrices(fwd, rev, check_D(D, b, l, h))


def per_sequence(fn, lengths: list[int], x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states, **kw):
    """A packed batch (1, total, ...) of sequences of ``lengths``, mixed by ``fn`` one sequence at a
    time (each slice alone, the initial states entering every one), outputs concatenated: (1, total, H, P)."""
    per_token_D = D is not None and D.dim() == 3
    outs = []
    for part in sequence_slices(lengths):
        if part.start == part.stop:
            continue
        outs.append(fn(x[:, part], dt_fwd[:, part], dt_bwd[:, part], A, B_fwd[:, part], C_fwd[:, part],
                       B_bwd[:, part], C_bwd[:, part], D[:, part] if per_token_D else D, initial_states=initial_states,
                       **kw))
    if not outs:  # no position at all: the empty output, attached to every input
        return fn(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states=initial_states, **kw)
    return torch.cat(outs, dim=1)


def quasiseparable_ref(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, initial_states=None,
                       cu_seqlens=None):
    """Hydra's quasiseparable mixer applied through its explicit matrix (float64).

    ``initial_states``: None, one (B, H, P, N) / (H, P, N) tensor used by both
    directions, or a (forward, backward) pair. ``cu_seqlens``: the (n + 1,)
    offsets of a packed batch (B = 1): the reference then runs each sequence
    alone (a plain loop) and concatenates the outputs.
    """
    (b, l, h, p, g, n), (s_fwd, s_bwd) = check_hydra_args(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D,
                                                         initial_states)
    if cu_seqlens is not None:
        return per_sequence(quasiseparable_ref, check_cu_seqlens(cu_seqlens, b, l), x, dt_fwd, dt_bwd, A, B_fwd,
                            C_fwd, B_bwd, C_bwd, D, initial_states)
    out_dtype = x.dtype
    x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd = (
        t.double() for t in (x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd))
    D = None if D is None else D.double()
    Q = quasiseparable_matrix(dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D)
    y = torch.einsum("bhij,bjhp->bihp", Q, x)
    if s_fwd is not None:
        # y_f[i] = C_f[i-1]^T exp(sum_{k<=i-1} log a_f) s0 for i >= 1
        cs = torch.cumsum(dt_fwd * A, dim=1)
        contrib = torch.exp(cs)[..., None] * torch.einsum("bihn,bhpn->bihp", expand_groups(C_fwd, h), s_fwd.double())
        y[:, 1:] += contrib[:, :-1]
    if s_bwd is not None:
        cs = torch.cumsum((dt_bwd * A).flip(1), dim=1).flip(1)  # sum_{k>=i}
        contrib = torch.exp(cs)[..., None] * torch.einsum("bihn,bhpn->bihp", expand_groups(C_bwd, h), s_bwd.double())
        y[:, :-1] += contrib[:, 1:]
    return y.to(out_dtype)
