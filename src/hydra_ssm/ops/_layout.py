"""Conversions between the public layout (B, L, H, P) and the chunk-major layout (c, B, H, Q, P)."""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn.functional as F


def num_chunks(seqlen: int, chunk_size: int) -> int:
    return -(-seqlen // chunk_size)


def to_chunks(t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(B, L, H, *rest) -> (c, B, H, Q, *rest), zero-padding L up to c * Q.

    Chunk-major, so that any range of chunks is one contiguous block.
    """
    b, l = t.shape[:2]
    pad = num_chunks(l, chunk_size) * chunk_size - l
    if pad:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    t = t.view(b, -1, chunk_size, *t.shape[2:])  # (B, c, Q, H, *rest)
    return t.permute(1, 0, 3, 2, *range(4, t.dim())).contiguous()


def from_chunks(t: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(c, B, H, Q, *rest) -> (B, L, H, *rest)."""
    c, b, h, q = t.shape[:4]
    t = t.permute(1, 0, 3, 2, *range(4, t.dim())).reshape(b, c * q, h, *t.shape[4:])
    return t[:, :seqlen]


def check_chunk_size(chunk_size) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


class PackedLayout:
    """Where the positions of a packed batch go in a spaced-out copy of it.

    A packed batch holds sequences of ``lengths`` back to back (total = sum of
    lengths). In the spaced-out layout every sequence starts at a multiple of
    ``align`` and is followed by at least ``gap`` empty positions (then by more,
    up to the next multiple of ``align``); empty sequences take no room.

    Fields: ``index`` (total,) int64, the spaced-out position of each packed
    one; ``length``, the spaced-out length; ``starts``, the spaced-out start of
    every non-empty sequence, and ``lengths`` those sequences' lengths.

    With ``align`` the chunk size of a scan and ``gap`` 0, no chunk holds two
    sequences: the scans then restart their carries at :meth:`first_chunks`
    (left to right) or :meth:`last_chunks` (right to left).
    """

    def __init__(self, lengths: list[int], align: int, gap: int, device=None):
        starts, nonempty, pieces, at = [], [], [], 0
        for n in lengths:
            if n == 0:
                continue
            starts.append(at)
            nonempty.append(n)
            pieces.append(torch.arange(at, at + n, device=device))
            at += num_chunks(n + gap, align) * align
        self.starts, self.lengths, self.length, self.align = starts, nonempty, at, align
        self.index = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=device)

    def first_chunks(self) -> set[int]:
        """The chunks of ``align`` positions where the non-empty sequences start."""
        return {s // self.align for s in self.starts}

    def last_chunks(self) -> set[int]:
        """The chunks of ``align`` positions where the non-empty sequences end."""
        return {(s + n - 1) // self.align for s, n in zip(self.starts, self.lengths)}

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        """(1, total, *rest) -> (1, length, *rest), zero on the empty positions (differentiable)."""
        out = t.new_zeros(t.shape[0], self.length, *t.shape[2:])
        return out.index_copy(1, self.index, t)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(1, length, *rest) -> (1, total, *rest): the inverse of :meth:`scatter` on the occupied positions."""
        return t.index_select(1, self.index)


def sequence_slices(lengths: list[int]) -> list[slice]:
    """The packed positions of every sequence of ``lengths`` (empty ones included), in order."""
    ends = list(accumulate(lengths, initial=0))
    return [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]
