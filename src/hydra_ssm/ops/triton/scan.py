"""Hydra's fused scan on Triton kernels: the launchers, a ``torch.library`` custom op, its autograd.

``hydra_scan`` computes what ``quasiseparable_chunked`` computes (same arguments, already
checked by the caller), with the log-decays prepared here under ordinary autograd and the
rest in the kernels of ``kernels.py``. The forward and backward kernels are the custom ops
``hydra_ssm::scan_fwd`` and ``hydra_ssm::scan_bwd``, with fake (meta) kernels, so
``torch.compile`` treats them as opaque calls and traces the code around them.

No host synchronisation: every size comes from tensor shapes.

Log-decays are cumulative sums inside each chunk, formed in float64 and kept in the
compute dtype (float32 unless an input is float64). In float32 an entry exp(r_i - k_j)
of a block then has a relative error up to about |T| 2^-24, T the chunk's total
log-decay (1e-5 at |T| = 200); the torch backend switches to float64 log-decays past
|T| = 256, which needs a host synchronisation this path does not make.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .._layout import to_chunks
from .._shapes import compute_dtype
from ..chunked import log_decays
from ..quasiseparable import BACKWARD, FORWARD
from . import kernels
from ._launch import block_size, tl_dtype

MAX_CHUNK = 64  # past 64 the Q x Q tiles of the backward kernel no longer fit in registers
NUM_WARPS = 4
PASS_BLOCK_P = 16  # state columns per program of the carry loops (measured on an H100: 16 columns, 1 warp)
PASS_WARPS = 1
GRAD_WARPS = 4
GRAD_STAGES = 2


def block_chunk(chunk_size: int) -> int:
    """The chunk the kernels use: the largest power of two <= chunk_size, clamped to [16, MAX_CHUNK]
    (tl.dot needs at least 16)."""
    return max(16, min(MAX_CHUNK, 1 << (max(chunk_size, 1).bit_length() - 1)))


class Plan(NamedTuple):
    """The sizes of one call of the kernels and their compile-time choices."""

    b: int
    l: int
    h: int
    p: int  # headdim
    g: int
    n: int  # d_state
    nc: int  # chunks
    lc: int  # the chunk-padded length, nc * chunk
    bn: int  # tile widths of d_state and headdim (powers of two)
    bp: int
    state_dtype: torch.dtype  # of the chunk states: 16 bits for 16-bit inputs, else the accumulation dtype
    consts: dict  # Q, BN, BP, DOT (matmul operand dtype), PREC, ACC (accumulation dtype)


def _plan(x: torch.Tensor, B_fwd: torch.Tensor, acc: torch.dtype, chunk: int) -> Plan:
    b, l, h, p = x.shape
    g, n = B_fwd.shape[2:]
    nc = triton.cdiv(l, chunk)
    bn, bp = block_size(n, 128), block_size(p, 128)
    sixteen = x.dtype in (torch.bfloat16, torch.float16)
    dot = torch.float64 if acc == torch.float64 else x.dtype
    return Plan(b, l, h, p, g, n, nc, nc * chunk, bn, bp, x.dtype if sixteen else acc,
                dict(Q=chunk, BN=bn, BP=bp, DOT=tl_dtype(dot), PREC="ieee", ACC=tl_dtype(acc)))


def _same_strides(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors, made contiguous unless they already share one stride layout (one set of stride args)."""
    if all(t.stride() == ts[0].stride() for t in ts):
        return ts
    return tuple(t.contiguous() for t in ts)


@torch.library.custom_op("hydra_ssm::scan_fwd", mutates_args=())
def scan_fwd(x: torch.Tensor, dt_fwd: torch.Tensor, dt_bwd: torch.Tensor, B_fwd: torch.Tensor, C_fwd: torch.Tensor,
             B_bwd: torch.Tensor, C_bwd: torch.Tensor, decays: torch.Tensor, totals: torch.Tensor,
             D: torch.Tensor | None, init: torch.Tensor | None, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, L, H, P) in x's dtype, and the entering states (2, B, NC, H, BN, BP) that backward reads."""
    pl = _plan(x, B_fwd, decays.dtype, chunk)
    B_fwd, C_fwd, B_bwd, C_bwd = _same_strides(B_fwd, C_fwd, B_bwd, C_bwd)
    dt_fwd, dt_bwd = _same_strides(dt_fwd, dt_bwd)
    sizes, sB, sdt = (pl.b, pl.l, pl.h, pl.g, pl.n, pl.p, pl.nc, pl.lc), B_fwd.stride(), dt_fwd.stride()
    # the states in 16 bits for 16-bit inputs: they are the largest tensors the kernels move
    states = torch.empty(2, pl.b, pl.nc, pl.h, pl.bn, pl.bp, device=x.device, dtype=pl.state_dtype)
    y = torch.empty(pl.b, pl.l, pl.h, pl.p, device=x.device, dtype=x.dtype)
    grid = (pl.nc, pl.b * pl.h)
    kernels.chunk_states[grid](x, B_fwd, B_bwd, dt_fwd, dt_bwd, decays, totals, states, *sizes,
                               *x.stride(), *sB, *sdt, **pl.consts, num_warps=NUM_WARPS)
    si = (0,) * 5 if init is None else init.stride()
    block_p = min(PASS_BLOCK_P, pl.bp)
    kernels.pass_states[(pl.b * pl.h, 2, pl.bp // block_p)](
        states, totals, init if init is not None else states, pl.b, pl.h, pl.n, pl.p, pl.nc, *si,
        HAS_INIT=init is not None, BN=pl.bn, BP=pl.bp, BLOCK_P=block_p, ACC=pl.consts["ACC"], num_warps=PASS_WARPS)
    sD = (0, 0, 0) if D is None else D.stride()
    kernels.outputs[grid](x, B_fwd, C_fwd, B_bwd, C_bwd, dt_fwd, dt_bwd, decays, states,
                          D if D is not None else x, y, *sizes, *x.stride(), *sB, *sdt, *sD, *y.stride(),
                          HAS_D=D is not None, **pl.consts, num_warps=NUM_WARPS)
    return y, states


@scan_fwd.register_fake
def _(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, init, chunk):
    pl = _plan(x, B_fwd, decays.dtype, chunk)
    return x.new_empty(pl.b, pl.l, pl.h, pl.p), decays.new_empty(2, pl.b, pl.nc, pl.h, pl.bn, pl.bp,
                                                                 dtype=pl.state_dtype)


@torch.library.custom_op("hydra_ssm::scan_bwd", mutates_args=())
def scan_bwd(dy: torch.Tensor, x: torch.Tensor, dt_fwd: torch.Tensor, dt_bwd: torch.Tensor, B_fwd: torch.Tensor,
             C_fwd: torch.Tensor, B_bwd: torch.Tensor, C_bwd: torch.Tensor, decays: torch.Tensor,
             totals: torch.Tensor, D: torch.Tensor | None, states: torch.Tensor,
             chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    """Gradients (accumulation dtype): dx (B, L, H, P); dBC (4, B, L, G, N) = dB_f, dC_f, dB_b, dC_b;
    ddt (2, B, L, H) as a factor; ddecays (4, B, LC, H); dtotals (2, B, NC, H); dD (B, L, H) (empty
    without D); dinit (2, B, H, P, N)."""
    pl = _plan(x, B_fwd, decays.dtype, chunk)
    b, l, h, g, n, p, nc, lc = sizes = (pl.b, pl.l, pl.h, pl.g, pl.n, pl.p, pl.nc, pl.lc)
    B_fwd, C_fwd, B_bwd, C_bwd = _same_strides(B_fwd, C_fwd, B_bwd, C_bwd)
    dt_fwd, dt_bwd = _same_strides(dt_fwd, dt_bwd)
    sB, sdt = B_fwd.stride(), dt_fwd.stride()
    new = dict(device=x.device, dtype=decays.dtype)
    grid = (nc, b * h)
    dS = torch.empty_like(states)
    kernels.readout_grads[grid](dy, C_fwd, C_bwd, decays, dS, *sizes, *dy.stride(), *sB, **pl.consts,
                                num_warps=NUM_WARPS)
    block_p = min(PASS_BLOCK_P, pl.bp)
    dtot_carry = torch.empty(pl.bp // block_p, 2, b, nc, h, **new)
    dinit = torch.empty(2, b, h, p, n, **new)
    kernels.pass_state_grads[(b * h, 2, pl.bp // block_p)](dS, states, totals, dtot_carry, dinit, b, h, n, p, nc,
                                                           BN=pl.bn, BP=pl.bp, BLOCK_P=block_p,
                                                           ACC=pl.consts["ACC"], num_warps=PASS_WARPS)
    dx = torch.empty(b, l, h, p, **new)
    dBC = torch.empty(4, b, l, h, pl.bn, **new)
    dBC[1, :, l - 1] = 0  # the rows of C no output reads: C_fwd's last, C_bwd's first
    dBC[3, :, 0] = 0
    ddt = torch.empty(2, b, l, h, **new)
    ddec = torch.empty(4, b, lc, h, **new)
    dtot = torch.empty(2, b, nc, h, **new)
    dD = torch.empty(b, l, h, **new) if D is not None else x.new_empty(0, dtype=decays.dtype)
    sD = (0, 0, 0) if D is None else D.stride()
    for first, last in ((0, 1), (1, 2)):  # one launch per direction: half the live Q x Q tiles of one for both
        kernels.chunk_grads[grid](x, dy, B_fwd, C_fwd, B_bwd, C_bwd, dt_fwd, dt_bwd, decays, totals, states, dS,
                                  D if D is not None else x, dx, dBC, ddt, ddec, dtot, dD,
                                  *sizes, *x.stride(), *dy.stride(), *sB, *sdt, *sD, *dx.stride(),
                                  FIRST=first, LAST=last, ADD_DX=first > 0, HAS_D=D is not None and first == 0,
                                  **pl.consts, num_warps=GRAD_WARPS, num_stages=GRAD_STAGES)
    # per-head gradients of the group tensors: summed over the heads of each group
    dBC = dBC[..., :n].view(4, b, l, g, h // g, n).sum(4)
    return dx, dBC, ddt, ddec, dtot + dtot_carry.sum(0), dD, dinit


@scan_bwd.register_fake
def _(dy, x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, states, chunk):
    pl = _plan(x, B_fwd, decays.dtype, chunk)
    b, l, h, p, g, n = pl.b, pl.l, pl.h, pl.p, pl.g, pl.n
    new = decays.new_empty
    return (new(b, l, h, p), new(4, b, l, g, n), new(2, b, l, h), new(4, b, pl.lc, h), new(2, b, pl.nc, h),
            new(b, l, h) if D is not None else new(0), new(2, b, h, p, n))


def _setup_context(ctx, inputs, output):
    x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, init, chunk = inputs
    ctx.save_for_backward(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, output[1])
    ctx.chunk = chunk
    ctx.has_init = init is not None


def _backward(ctx, dy, dstates):
    x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, states = ctx.saved_tensors
    dx, dBC, ddt, ddec, dtot, dD, dinit = scan_bwd(dy, x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays,
                                                   totals, D, states, ctx.chunk)
    dB_f, dC_f, dB_b, dC_b = (t.to(B_fwd.dtype) for t in dBC.unbind(0))
    return (dx.to(x.dtype), ddt[0].to(dt_fwd.dtype), ddt[1].to(dt_bwd.dtype), dB_f, dC_f, dB_b, dC_b, ddec, dtot,
            None if D is None else dD.to(D.dtype), dinit if ctx.has_init else None, None)


scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def _log_decays(dt_fwd: torch.Tensor, dt_bwd: torch.Tensor, A: torch.Tensor, q: int, acc: torch.dtype):
    """(decays (4, B, LC, H): r_f, k_f, r_b, k_b; totals (2, B, NC, H)) inside chunks of q, under autograd.

    The torch path's log-decays (``chunked.log_decays``, in float64: no host synchronisation), laid out
    position-major for the kernels: in both directions r_i - k_j is the sum of dt A strictly between i and j,
    and T is the chunk's total.
    """
    b, l, h = dt_fwd.shape
    dts = [to_chunks(dt.unsqueeze(-1), q).squeeze(-1) for dt in (dt_fwd, dt_bwd)]  # (c, B, H, Q)
    fwd, bwd = log_decays(dts, A, [FORWARD, BACKWARD], torch.float64)
    decays = torch.stack([fwd.r, fwd.k, bwd.r, bwd.k]).permute(0, 2, 1, 4, 3)  # (4, B, c, Q, H)
    totals = torch.stack([fwd.T, bwd.T]).transpose(1, 2)  # (2, B, c, H)
    # contiguous: the kernels index both as dense arrays (a reshape may keep a view with size-1 strides)
    return decays.reshape(4, b, -1, h).to(acc).contiguous(), totals.to(acc).contiguous()


def hydra_scan(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size: int = 64,
               initial_states=(None, None)):
    """Hydra's mixer on the Triton kernels (arguments checked by the caller; B, L > 0).

    x (B, L, H, P); dt_* (B, L, H); A (H,); B_*, C_* (B, L, G, N); D None, (H,) or (B, L, H);
    initial_states: a (forward, backward) pair, each None or (B, H, P, N). Returns y in x's dtype.
    """
    acc = compute_dtype(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, *initial_states)
    if acc == torch.float64:
        x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd = (t.double() for t in (x, dt_fwd, dt_bwd, B_fwd, C_fwd,
                                                                              B_bwd, C_bwd))
    b, l, h, p = x.shape
    q = block_chunk(chunk_size)
    decays, totals = _log_decays(dt_fwd, dt_bwd, A, q, acc)
    if D is not None:
        D = (D.expand(b, l, h) if D.dim() == 1 else D).to(acc)
    init_f, init_b = initial_states
    init = None
    if init_f is not None or init_b is not None:
        zero = x.new_zeros(b, h, p, B_fwd.shape[-1], dtype=acc)
        init = torch.stack([zero if s is None else s.to(acc) for s in (init_f, init_b)])
    y, _ = scan_fwd(x, dt_fwd, dt_bwd, B_fwd, C_fwd, B_bwd, C_bwd, decays, totals, D, init, q)
    return y
