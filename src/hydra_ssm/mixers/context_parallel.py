"""Context parallelism: the exchanges between processes that each hold one shard of a sequence.

The ranks of a ``torch.distributed`` process group hold consecutive, contiguous
shards of the same sequences, rank 0 the first. A mixer that runs context-parallel
(Hydra: ``Hydra.forward(u_shard, context_parallel_group=group)``) needs three
exchanges per call, all all-gathers within the group, whatever the sequence length:

1. :func:`gather_ints`: a few integers per rank (batch size, shard length, padding), to check
   that the shards fit together before any other exchange;
2. :func:`exchange_halo`: the first and last ``halo`` rows of every shard, so each
   rank sees the rows of its neighbours that its convolution and its edge outputs read;
3. :func:`gather_summaries`: every shard's :class:`~hydra_ssm.ops.boundary.SegmentSummary`
   (two (B, H, P, N) states and two (B, H) log-decays).

So the volume per layer is ``world x B x (2 halo d_model + 2 H P N + 2 H)`` numbers in
each direction (forward: the gathers; backward: all-reduces of the same sizes),
independent of the sequence length. :class:`ExchangeLog` counts it.

Gradients cross the ranks: :func:`all_gather` is differentiable. Its backward sums
the gradients that every rank's loss sends to each gathered piece (an all-reduce of
the stacked gradients) and hands each rank the slice of its own piece, so the
gradients of every rank's inputs are those of the sum of all ranks' losses.
Every rank must call the same exchanges in the same order (forward and backward),
as with any collective; errors raised from :func:`gather_ints`'s result are raised
on every rank alike.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from ..ops.boundary import SegmentSummary

_LOGS: list["ExchangeLog"] = []


class ExchangeLog:
    """Bytes moved by the context-parallel exchanges while it is open::

        with ExchangeLog() as log:
            layer(u_shard, context_parallel_group=group).sum().backward()
        log.forward_bytes, log.backward_bytes

    Counted per rank as the size of each collective's result: an all-gather of a
    piece of s bytes from W ranks counts W * s (forward), its backward all-reduce
    the same W * s.
    """

    def __init__(self):
        self.forward_bytes = 0
        self.backward_bytes = 0

    def __enter__(self):
        _LOGS.append(self)
        return self

    def __exit__(self, *exc):
        _LOGS.remove(self)


def _note(nbytes: int, backward: bool) -> None:
    for log in _LOGS:
        if backward:
            log.backward_bytes += nbytes
        else:
            log.forward_bytes += nbytes


def check_group(group) -> None:
    """``group`` must be a process group of an initialised ``torch.distributed``."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("context_parallel_group was given but torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    if not isinstance(group, dist.ProcessGroup):
        raise ValueError(f"context_parallel_group must be a torch.distributed ProcessGroup "
                         f"(e.g. from torch.distributed.new_group), got {type(group).__name__}")


class _AllGather(torch.autograd.Function):
    """(...) on every rank -> (world, ...) on every rank; backward: the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, piece, group):
        ctx.group = group
        world = dist.get_world_size(group)
        piece = piece.contiguous()
        parts = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(parts, piece, group=group)
        _note(world * piece.numel() * piece.element_size(), backward=False)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # every rank's loss reads every piece
        _note(grad.numel() * grad.element_size(), backward=True)
        return grad[dist.get_rank(ctx.group)], None


def all_gather(piece: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-gather: every rank's ``piece`` (same shape and dtype on all ranks), stacked
    in rank order: (world, *piece.shape)."""
    return _AllGather.apply(piece, group)


def gather_ints(values: list[int], group, device=None) -> list[list[int]]:
    """Every rank's ``values`` (a list of the same length on all ranks), in rank order. Not differentiable.
    ``device``: where the group's backend exchanges tensors (CUDA for nccl)."""
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    _note(len(parts) * mine.numel() * mine.element_size(), backward=False)
    return [p.tolist() for p in parts]


class ShardLayout(NamedTuple):
    """Where this rank's shard lies in the sequence."""

    rank: int  # this rank's place in the group (0: the sequence's first shard)
    world: int  # ranks in the group
    lengths: list  # every rank's shard length, in rank order
    offset: int  # position of this shard's first row in the whole sequence
    total: int  # the whole sequence's length


def shard_layout(batch: int, length: int, group, min_length: int = 1, what: str = "u",
                 padded: bool = False, device=None) -> ShardLayout:
    """Gathers every rank's (batch, length) and checks them: the same batch size everywhere, every
    shard at least ``min_length`` rows long, no rank with padding (``padded``: whether this rank's
    attention mask has any). Raises the same ValueError on every rank. ``device``: the inputs' device."""
    shapes = gather_ints([batch, length, int(padded)], group, device)
    batches = [b for b, _, _ in shapes]
    lengths = [n for _, n, _ in shapes]
    padded_ranks = [r for r, (_, _, pad) in enumerate(shapes) if pad]
    if padded_ranks:
        raise ValueError(f"context parallelism: attention_mask marks padding on rank(s) {padded_ranks}; the ranks "
                         f"must hold whole, unpadded shards of the sequences (an all-ones mask, or none)")
    if len(set(batches)) > 1:
        raise ValueError(f"context parallelism: {what} must hold the same sequences on every rank of the group, "
                         f"got batch sizes {batches} (rank order)")
    if min(lengths) < min_length:
        raise ValueError(f"context parallelism: every rank's shard of {what} needs at least {min_length} positions "
                         f"(the rows its neighbours read), got shard lengths {lengths} (rank order); "
                         f"use fewer ranks or a longer sequence")
    rank = dist.get_rank(group)
    return ShardLayout(rank, len(lengths), lengths, sum(lengths[:rank]), sum(lengths))


def exchange_halo(u: torch.Tensor, halo: int, layout: ShardLayout, group) -> tuple[torch.Tensor, int, int]:
    """This rank's shard with ``halo`` rows of each neighbour on its sides (none beyond the sequence's ends).

    u: (B, n, D) with n >= halo (checked by :func:`shard_layout`). Returns (window, left, right):
    window (B, left + n + right, D), where left, right are the rows added on each side (``halo``, or 0 at
    the sequence's start and end). Differentiable: the neighbours' rows carry their gradients back.
    """
    if halo == 0:
        return u, 0, 0
    edges = all_gather(torch.cat([u[:, :halo], u[:, -halo:]], 1), group)  # (world, B, 2 halo, D)
    rank, world = layout.rank, layout.world
    parts = [u]
    left = right = 0
    if rank > 0:
        parts.insert(0, edges[rank - 1][:, halo:])  # the left neighbour's last rows
        left = halo
    if rank < world - 1:
        parts.append(edges[rank + 1][:, :halo])  # the right neighbour's first rows
        right = halo
    return torch.cat(parts, 1), left, right


def gather_summaries(summary: SegmentSummary, group) -> list[SegmentSummary]:
    """Every rank's segment summary, in rank order (one all-gather of the four tensors flattened together)."""
    batch = summary.state_fwd.shape[0]
    shapes = [t.shape[1:] for t in summary]
    flat = torch.cat([t.reshape(batch, -1) for t in summary], 1)
    gathered = all_gather(flat, group)  # (world, B, 2 H P N + 2 H)
    out = []
    for row in gathered.unbind(0):
        pieces = torch.split(row, [s.numel() for s in shapes], dim=1)
        out.append(SegmentSummary(*(p.reshape(batch, *s) for p, s in zip(pieces, shapes))))
    return out
