"""Hydra: the bidirectional (quasiseparable) state space mixer."""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._checks import (check_bool, check_choice, check_float_dtype, check_number, check_positive_ints,
                       check_sequence_input, exporting, tracing, value_checks_enabled)
from ..ops import (quasiseparable_chunked, quasiseparable_matrix, quasiseparable_minimal, quasiseparable_two_pass,
                   semiseparable_chunked, semiseparable_matrix)
from ..ops.bidirectional import combine_directions, combine_matrices, diagonal_term, shift_later
from ..ops.boundary import EnteringStates, SegmentSummary, entering_state_readout, entering_states, segment_summary
from ..ops._layout import PackedLayout
from ..ops.quasiseparable import resolve_backend
from .common import (check_layer_sizes, check_padded_input, conv_silu, decay_rate, dt_bias, in_proj_and_conv,
                     token_diagonal, work_dtype)
from .context_parallel import check_group, exchange_halo, gather_summaries, shard_layout
from .norm import GatedRMSNorm
from .registry import SequenceMixer, check_packed_row, register_mixer

SCAN_IMPLS = {
    "auto": functools.partial(quasiseparable_chunked, backend="auto"),  # Triton on CUDA when importable, else torch
    "fused": functools.partial(quasiseparable_chunked, backend="torch"),
    "triton": functools.partial(quasiseparable_chunked, backend="triton"),
    "two_pass": quasiseparable_two_pass,
    "minimal": quasiseparable_minimal,
}


#: how the two directions' outputs are joined (the ``combine`` option)
COMBINES = ("add", "concat")


def scan_for(scan_impl: str):
    """The scan to run: the loop-free ``minimal`` one while ``torch.export`` / ``torch.onnx.export``
    trace the layer (one graph for every length, no in-place writes), else ``scan_impl``'s."""
    return quasiseparable_minimal if exporting() else SCAN_IMPLS[scan_impl]


def check_dt_limit(dt_limit) -> None:
    """``dt_limit``: a pair (low, high) of numbers with 0 <= low < high (high may be inf)."""
    ok = isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in dt_limit)
    if not ok or not 0 <= dt_limit[0] < dt_limit[1]:
        raise ValueError(f"dt_limit must be a pair (low, high) with 0 <= low < high, got {dt_limit!r}")


class ValueStream(NamedTuple):
    """What the scan reads at every position (after in_proj, the conv and the activation)."""

    z: torch.Tensor  # (B, L, d_inner) the gate
    x: torch.Tensor  # (B, L, H, P) values
    B_fwd: torch.Tensor  # (B, L, G, N)
    C_fwd: torch.Tensor  # (B, L, G, N)
    B_bwd: torch.Tensor  # (B, L, G, N)
    C_bwd: torch.Tensor  # (B, L, G, N)
    dt_fwd: torch.Tensor  # (B, L, H) step sizes, 0 at padding
    dt_bwd: torch.Tensor  # (B, L, H)


class Segment(NamedTuple):
    """One segment's value stream, and the C rows its edge outputs read across the cuts."""

    stream: ValueStream  # (B, n, ...) the segment's positions only
    C_fwd_before: torch.Tensor  # (B, G, N) C_fwd of the position before the segment (0 at the sequence's start)
    C_bwd_after: torch.Tensor  # (B, G, N) C_bwd of the position after it (0 at the sequence's end)


@register_mixer("hydra")
class Hydra(SequenceMixer):
    """Hydra layer, a drop-in for the reference module (same arguments, defaults
    and parameter names), running on any PyTorch device.

    ``forward(u, attention_mask=None, cu_seqlens=None)``: u is (B, L, d_model); the
    optional mask is (B, L), 1 for a valid token, padding on the left or right.
    Outputs at valid positions equal those of each sequence run alone; padded
    positions of the output are zero. Or a packed batch: u (1, total, d_model)
    holding sequences back to back and ``cu_seqlens`` their int offsets (n + 1,),
    as in flash-attention and mamba_ssm: each sequence is mixed as if it were
    alone (neither the scans nor the convolution cross a boundary; learnable
    initial states start every sequence), at the cost of its own tokens only.

    ``forward(u_shard, context_parallel_group=group)``: context parallelism.
    The ranks of the ``torch.distributed`` group each hold one contiguous shard
    (B, n_rank, d_model) of the same sequences, rank 0 the first; each gets
    the layer's output at its own positions, exactly (forward and backward:
    gradients reach every rank's shard and parameters as if one process had
    run the whole sequence; parameter gradients are then summed over the
    group). Shards may have different lengths, each at least ``halo`` rows.
    The ranks exchange ``halo`` rows with their neighbours and one summary of
    O(H P N) numbers per rank (``hydra_ssm.mixers.context_parallel``): the
    communication does not grow with the sequence length. No attention mask.

    ``scan_impl`` chooses the quasiseparable algorithm: ``"auto"`` (default: the
    fused Triton kernels for CUDA inputs when ``triton`` is installed and the batch
    is not packed, else ``"fused"``), ``"fused"`` (the pure-PyTorch scan, one pass
    over the chunks for both directions, any device), ``"triton"`` (the Triton
    kernels, forced: :mod:`hydra_ssm.ops.triton`), ``"two_pass"`` (the causal
    scan on x and on the flipped x, kept for comparison) or ``"minimal"`` (no
    loops, no in-place writes: :func:`hydra_ssm.ops.quasiseparable_minimal`).
    While ``torch.export`` or ``torch.onnx.export`` traces the layer it always
    runs ``"minimal"``, so the exported graph holds for every sequence length.
    ``chunk_size`` only trades speed against memory: the output does not depend
    on it (beyond float rounding). Its default, 64, is the fastest on CPUs for
    d_state = headdim = 64; the reference module uses 256, tuned for its GPU
    kernels, and any value may be passed.
    ``use_mem_eff_path`` is accepted for compatibility and has no effect.

    Ablations of the design (each changes one thing; the defaults are the layer above):

    * ``shift=False``: no shift of the two directions' outputs,
      ``y = M_f x + flip(M_b flip(x)) + D x`` with M_f, M_b the causal (Mamba-2)
      matrices including their diagonals: two causal passes added, so each
      position reads itself through both scans and through D.
    * ``per_token_diagonal=False``: no ``fc_D`` (the parameter is not built); the
      diagonal is the learned per-head ``D`` alone.
    * ``combine="concat"``: the forward and backward outputs (each shifted as
      ``shift`` says) are concatenated on channels, ``[fwd | bwd]`` (B, L,
      2 d_inner), and mapped back to d_inner by ``combine_proj`` (a linear map
      without bias, built only then) before the gated norm; the diagonal term
      ``D x`` is added after it.
    * ``shared_bc=True``: one B and one C, from in_proj, read by both directions
      (in_proj and the conv shrink by 2 ngroups d_state channels); the default
      gives each direction its own, as the reference module does.

    ``per_token_diagonal=False`` and ``shared_bc=True`` run the same scans as the
    default (every path: packed, streaming, context parallel, export).
    ``shift=False`` and ``combine="concat"`` run the causal chunked scan
    (:func:`hydra_ssm.ops.semiseparable_chunked`) on x and on the flipped x,
    whatever ``scan_impl``; a packed row is then unpacked into a padded batch
    (``SequenceMixer.forward_packed``), and streaming, context parallelism and
    export are refused (ValueError). ``materialize`` gives the variant's matrix;
    with ``combine="concat"`` the layer mixes channels after the scans and has
    none (ValueError).

    Inputs: ``u`` must have the parameters' dtype (a float32 layer does not
    silently run a float64 or bfloat16 input; convert one or the other), except
    under ``torch.autocast``, which chooses the compute dtype. A batch of 0
    sequences returns an empty ``(0, L, d_model)`` output; ``L = 0`` is an error.
    """

    position_aware = True  # the scan orders the tokens
    context_parallel = True  # forward(u_shard, context_parallel_group=group): exact over shards of the sequence
    can_stream = True  # Hydra.stream

    def __init__(
        self,
        d_model,
        d_state=64,
        d_conv=7,
        conv_init=None,
        expand=2,
        headdim=64,
        ngroups=1,
        dt_min=0.001,
        dt_max=0.1,
        dt_init_floor=1e-4,
        dt_limit=(0.0, float("inf")),
        learnable_init_states=False,
        activation="swish",
        bias=False,
        conv_bias=True,
        chunk_size=64,
        use_mem_eff_path=False,
        layer_idx=None,
        device=None,
        dtype=None,
        scan_impl="auto",
        shift=True,
        per_token_diagonal=True,
        combine="add",
        shared_bc=False,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        check_positive_ints(d_state=d_state, ngroups=ngroups, chunk_size=chunk_size)
        check_layer_sizes(d_model, expand, headdim, d_conv, activation)
        check_float_dtype(dtype)
        for name, value in (("learnable_init_states", learnable_init_states), ("bias", bias), ("conv_bias", conv_bias),
                            ("shift", shift), ("per_token_diagonal", per_token_diagonal), ("shared_bc", shared_bc)):
            check_bool(name, value)
        nheads = expand * d_model // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"the number of heads ({nheads}) must be divisible by ngroups ({ngroups})")
        check_number("dt_min", dt_min, low=0, low_open=True, what="a positive number")
        check_number("dt_max", dt_max, low=0, low_open=True, what="a positive number")
        if not dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_number("dt_init_floor", dt_init_floor, low=0, what="a non-negative number")
        check_dt_limit(dt_limit)
        if conv_init is not None:
            check_number("conv_init", conv_init, low=0, low_open=True, what="a positive number or None")
        check_choice("scan_impl", scan_impl, sorted(SCAN_IMPLS))
        check_choice("combine", combine, COMBINES)

        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.conv_init = conv_init
        self.expand = expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.ngroups = ngroups
        self.nheads = nheads
        self.dt_limit = tuple(dt_limit)
        self.learnable_init_states = learnable_init_states
        self.activation = activation
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx
        self.scan_impl = scan_impl
        self.shift = shift
        self.per_token_diagonal = per_token_diagonal
        self.combine = combine
        self.shared_bc = shared_bc
        if self.two_scans:  # the models read these per layer: this variant computes whole sequences only
            self.can_stream = False
            self.context_parallel = False

        # in_proj columns: [z (d_inner) | x (d_inner), B_f, C_f, B_b, C_b (G*N each) | dt_f, dt_b (H each)],
        # with shared_bc: [z | x, B, C | dt_f, dt_b]
        self.bc_dim = ngroups * d_state
        self.conv_dim = self.d_inner + (2 if shared_bc else 4) * self.bc_dim
        self.in_proj, self.conv1d = in_proj_and_conv(d_model, self.d_inner + self.conv_dim + 2 * nheads, self.conv_dim,
                                                     d_conv, conv_init, bias, conv_bias, factory)
        if learnable_init_states:
            self.init_states = nn.Parameter(torch.zeros(nheads, headdim, d_state, **factory))
            self.init_states._no_weight_decay = True

        self.dt_bias = dt_bias(nheads, dt_min, dt_max, dt_init_floor, factory)
        self.A_log = nn.Parameter(torch.zeros(nheads, device=device, dtype=dtype))  # A = -exp(A_log) = -1
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(nheads, **factory))
        self.D._no_weight_decay = True
        self.fc_D = nn.Linear(self.d_inner, nheads, bias=False, **factory) if per_token_diagonal else None
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        if combine == "concat":  # built last, so the other parameters draw the default layer's initial values
            self.combine_proj = nn.Linear(2 * self.d_inner, self.d_inner, bias=False, **factory)

    @property
    def two_scans(self) -> bool:
        """Whether the variant runs the two causal scans (``shift=False`` or ``combine="concat"``)
        instead of Hydra's quasiseparable scans."""
        return not self.shift or self.combine != "add"

    def _refuse_two_scans(self, what: str) -> None:
        """A ValueError naming the options when this variant cannot do ``what``."""
        if self.two_scans:
            raise ValueError(f"{what} is not supported with shift={self.shift}, combine={self.combine!r} (the "
                             f"ablations that run two causal scans): use shift=True, combine='add'")

    # ------------------------------------------------------------------ pieces
    def _value_stream(self, u: torch.Tensor, mask: torch.Tensor | None, packed: PackedLayout | None = None):
        """in_proj, masked non-causal conv, activation, split; dt with padding zeroed.

        ``packed``: for a packed row, the layout that spaces its sequences out by the conv's
        half-width, so that the conv reads zeros, not the next sequence, across a boundary.
        Returns a :class:`ValueStream`.
        """
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, 2 * self.nheads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)  # padding acts as the conv's zero padding
        if packed is not None:
            xBC = F.silu(packed.gather(self.conv1d(packed.scatter(xBC).transpose(1, 2)).transpose(1, 2)))
        elif self._fused_neighbours(u):  # conv + SiLU in one Triton kernel, channels last
            from ..ops.triton import depthwise_conv_silu_triton

            xBC = depthwise_conv_silu_triton(xBC, self.conv1d.weight, self.conv1d.bias)
        else:
            xBC = conv_silu(xBC, self.conv1d)
        if self.shared_bc:
            x, B_f, C_f = torch.split(xBC, [self.d_inner, self.bc_dim, self.bc_dim], dim=-1)
            B_b, C_b = B_f, C_f
        else:
            x, B_f, C_f, B_b, C_b = torch.split(xBC, [self.d_inner] + [self.bc_dim] * 4, dim=-1)
        # both directions share dt_bias: (B, L, 2, H)
        cdt = work_dtype(dt.dtype)
        dt = F.softplus(rearrange(dt.to(cdt), "b l (two h) -> b l two h", two=2) + self.dt_bias.to(cdt))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(self.dt_limit[0], self.dt_limit[1])
        if mask is not None:
            # dt = 0 at padding: no input, no decay; C = 0: no output read from padded rows.
            dt = dt * mask[..., None, None]
            C_f = C_f * mask[..., None].to(C_f.dtype)
            C_b = C_f if self.shared_bc else C_b * mask[..., None].to(C_b.dtype)
        dt_f, dt_b = dt.unbind(dim=2)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        B_f, C_f, B_b, C_b = (rearrange(t, "b l (g n) -> b l g n", g=self.ngroups) for t in (B_f, C_f, B_b, C_b))
        return ValueStream(z, x, B_f, C_f, B_b, C_b, dt_f, dt_b)

    def _A(self):
        return decay_rate(self.A_log)

    def _diag(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token diagonal D_t = fc_D(x_t) + D, (B, L, H); without fc_D the per-head D (H,)."""
        if self.fc_D is None:
            return self.D
        return token_diagonal(x, self.fc_D, self.D)

    def _check(self, u, attention_mask):
        return check_padded_input(u, self.d_model, attention_mask, self.in_proj.weight.dtype)

    # ---------------------------------------------------------------- forward
    def forward(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, context_parallel_group=None) -> torch.Tensor:
        if cu_seqlens is not None and attention_mask is not None:
            raise ValueError("pass attention_mask (a padded batch) or cu_seqlens (a packed row), not both")
        if context_parallel_group is not None:
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens (a packed row) and context_parallel_group (a sequence split across "
                                 "processes) cannot be combined: pass one of them")
            return self._forward_context_parallel(u, attention_mask, context_parallel_group)
        if exporting():
            self._refuse_two_scans("export (torch.export, torch.onnx.export)")
        if self.two_scans and cu_seqlens is not None:  # unpacked into a padded batch, mixed by the branch below
            return SequenceMixer.forward_packed(self, u, cu_seqlens)
        mask = self._check(u, attention_mask)
        packed = None
        if cu_seqlens is not None:
            packed = PackedLayout(check_packed_row(u, cu_seqlens), 1, self.d_conv // 2, u.device)
        if not tracing() and u.shape[0] == 0:  # no sequences: an empty output, still attached to out_proj for autograd
            return self.out_proj(u.new_zeros(0, u.shape[1], self.d_inner))
        z, x, B_f, C_f, B_b, C_b, dt_f, dt_b = self._value_stream(u, mask, packed)
        init = self.init_states if self.learnable_init_states else None
        if self.two_scans:
            y = self._two_scan_mix(x, dt_f, dt_b, B_f, C_f, B_b, C_b, init)
        else:
            y = scan_for(self.scan_impl)(x, dt_f, dt_b, self._A(), B_f, C_f, B_b, C_b, D=self._diag(x),
                                         chunk_size=self.chunk_size, initial_states=init, cu_seqlens=cu_seqlens)
        out = self._output(y, z)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        return out

    def _two_scan_mix(self, x, dt_f, dt_b, B_f, C_f, B_b, C_b, init) -> torch.Tensor:
        """The ablations' mixer (``shift=False`` or ``combine="concat"``) of the value stream: the causal scan of x
        with the forward parameters and of the flipped x with the backward ones, joined as ``shift`` and
        ``combine`` say. x (B, L, H, P); dt_* (B, L, H); B_*, C_* (B, L, G, N); init None or (H, P, N).
        Returns y (B, L, H, P)."""
        A = self._A()
        flip = lambda t: t.flip(1)  # noqa: E731
        y_f = semiseparable_chunked(x, dt_f, A, B_f, C_f, self.chunk_size, init)
        y_b = semiseparable_chunked(flip(x), flip(dt_b), A, flip(B_b), flip(C_b), self.chunk_size, init)
        if self.combine == "add":
            return combine_directions(y_f, y_b, x, self._diag(x), shift=self.shift)
        if self.shift:
            y_f, y_b = shift_later(y_f), shift_later(y_b)
        both = rearrange([y_f, flip(y_b)], "two b l h p -> b l (two h p)")  # channels [fwd | bwd]
        y = rearrange(self.combine_proj(both), "b l (h p) -> b l h p", p=self.headdim)
        return y + diagonal_term(x, self._diag(x))

    def forward_packed(self, u: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """A packed row (1, total, d_model) with its offsets: Hydra's own packed path (see :meth:`forward`)."""
        return self(u, cu_seqlens=cu_seqlens)

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gated norm and out_proj of the scan's output y (B, L, H, P) with the gate z: (B, L, d_model)."""
        y = rearrange(y, "b l h p -> b l (h p)")
        if torch.is_grad_enabled():
            # the norm saves z: a copy, so that the rest of in_proj's output (x, B, C, dt) is not kept with it
            z = z.contiguous()
        if self._fused_neighbours(y):
            from ..ops.triton import gated_rms_norm_triton

            return self.out_proj(gated_rms_norm_triton(y, z, self.norm.weight, self.norm.eps))
        return self.out_proj(self.norm(y, z))

    def _fused_neighbours(self, t: torch.Tensor) -> bool:
        """Whether the scan's neighbours (conv + SiLU, gated norm) run as Triton kernels too: wherever the scan
        does (``scan_impl`` "triton", or "auto" on CUDA with Triton importable), except while exporting."""
        if self.scan_impl not in ("auto", "triton") or exporting():
            return False
        backend = "auto" if self.scan_impl == "auto" else "triton"
        probe = t.new_empty(0, 0, self.nheads, self.headdim)  # the device and the widths the scan will see
        return resolve_backend(backend, probe, None, self.d_state) == "triton"

    # ------------------------------------------------ segments: streaming and context parallelism
    # A sequence cut into segments is computed exactly segment by segment from the states entering each
    # segment from both sides (``hydra_ssm.ops.boundary``). A segment needs ``halo`` rows of input on each
    # side: the conv's half-width, plus the one row whose C its first (last) output reads.

    @property
    def halo(self) -> int:
        """Rows of context a segment needs on each side of it."""
        return self.d_conv // 2 + 1

    def segment(self, u_window: torch.Tensor, left: int, right: int) -> Segment:
        """The value stream of ``u_window[:, left : L - right]``, given ``left`` and ``right`` rows of context.

        Each of ``left``, ``right`` is ``halo``, or fewer only where the window reaches the sequence's
        start (end): the conv's zero padding is then the sequence's own.
        """
        self._refuse_two_scans("a segment (streaming, context parallelism)")
        stream = self._value_stream(u_window, None)
        n = u_window.shape[1] - left - right
        inner = ValueStream(*(t[:, left:left + n] for t in stream))

        def row(t, i, present):  # (B, G, N): row i of t, or zeros where the sequence ends
            return t[:, i] if present else t.new_zeros(t.shape[0], *t.shape[2:])

        return Segment(inner, row(stream.C_fwd, left - 1, left > 0), row(stream.C_bwd, left + n, right > 0))

    def segment_summary(self, seg: Segment) -> SegmentSummary:
        """What the segment hands on to its neighbours in each direction (from zero entering states)."""
        s = seg.stream
        return segment_summary(s.x, s.dt_fwd, s.dt_bwd, self._A(), s.B_fwd, s.B_bwd)

    def initial_entering(self) -> tuple:
        """(forward, backward) states entering the whole sequence: the learned initial states, or zeros (None)."""
        init = self.init_states if self.learnable_init_states else None
        return init, init

    def segment_output(self, seg: Segment, entering: EnteringStates) -> torch.Tensor:
        """The layer's output (B, n, d_model) at the segment's positions, given the states entering it."""
        s = seg.stream
        A = self._A()
        y = scan_for(self.scan_impl)(s.x, s.dt_fwd, s.dt_bwd, A, s.B_fwd, s.C_fwd, s.B_bwd, s.C_bwd,
                                     D=self._diag(s.x), chunk_size=self.chunk_size)
        if entering.fwd is not None or entering.bwd is not None:
            # output i reads C_fwd[i-1] and C_bwd[i+1]: across the cuts at the segment's two edges
            C_fwd_read = torch.cat([seg.C_fwd_before.unsqueeze(1), s.C_fwd[:, :-1]], 1)
            C_bwd_read = torch.cat([s.C_bwd[:, 1:], seg.C_bwd_after.unsqueeze(1)], 1)
            y = y + entering_state_readout(s.dt_fwd, s.dt_bwd, A, C_fwd_read, C_bwd_read,
                                           entering.fwd, entering.bwd).to(y.dtype)
        return self._output(y, s.z)

    def _forward_context_parallel(self, u: torch.Tensor, attention_mask, group) -> torch.Tensor:
        """``forward`` of this rank's shard u (B, n, d_model) of sequences split over ``group``'s ranks
        (rank 0 the first shard); see ``hydra_ssm.mixers.context_parallel``."""
        self._refuse_two_scans("context_parallel_group")
        check_group(group)
        if attention_mask is not None:
            raise ValueError("attention_mask is not supported with context_parallel_group: every rank holds "
                             "whole, unpadded shards of the sequences")
        self._check(u, None)
        layout = shard_layout(u.shape[0], u.shape[1], group, min_length=self.halo, device=u.device)
        if u.shape[0] == 0:  # no sequences on any rank (the batch sizes agree)
            return self.out_proj(u.new_zeros(0, u.shape[1], self.d_inner))
        window, left, right = exchange_halo(u, self.halo, layout, group)
        seg = self.segment(window, left, right)
        entering = entering_states(gather_summaries(self.segment_summary(seg), group), self.initial_entering())
        return self.segment_output(seg, entering[layout.rank])

    @torch.no_grad()
    def stream(self, u: torch.Tensor, segment_len: int, out: torch.Tensor | None = None, *,
               prepare=None, finish=None) -> torch.Tensor:
        """``forward(u)`` computed ``segment_len`` positions at a time, for sequences too long to hold.

        Two passes over u: the first computes every segment's summary (the states it hands on), which
        give the exact states entering each segment from both sides; the second computes each segment's
        outputs from them. Working memory is that of one segment plus two (B, H, P, N) states per
        segment, whatever L is. u may live elsewhere than the layer (a memory-mapped CPU tensor for a
        GPU layer, say): segments are moved to the layer's device one at a time, and outputs are
        written into ``out`` (B, L, d_model) when given (a memory-mapped tensor, say), else into a new
        tensor on u's device. ``out`` may be u itself: the rows of u that a later segment still reads
        are kept aside before they are overwritten. Inference only (no autograd); no attention mask
        (whole sequences).

        A block around the layer can run in the same two passes (``HydraModel.stream_hidden_states``):
        ``prepare(rows)`` maps rows of u (B, n, d_model) to the layer's input (a LayerNorm, say), and
        ``finish(rows, y)`` gives what is written at a segment's positions from u's rows there and the
        layer's output y (B, n, d_model) (a residual, norm and MLP, say). Both must act on each position
        alone. Default: the layer reads u and its output is written.
        """
        self._refuse_two_scans("stream")
        check_positive_ints(segment_len=segment_len)
        check_sequence_input(u, self.d_model, check_finite=False)
        weight = self.in_proj.weight
        if u.dtype != weight.dtype:
            raise ValueError(f"u has dtype {u.dtype} but the layer's parameters are {weight.dtype}")
        batch, length, _ = u.shape
        if out is None:
            out = u.new_empty(batch, length, self.d_model)
        elif not isinstance(out, torch.Tensor) or out.shape != u.shape or out.dtype != u.dtype:
            raise ValueError(f"out must be a tensor of u's shape {tuple(u.shape)} and dtype {u.dtype}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        starts = range(0, length, segment_len)

        def segment_at(start, rows_before):
            """The segment at ``start`` and its rows of u; ``rows_before`` (None: read from u) are the
            rows of u before ``start`` that its window reads (at most ``halo``)."""
            stop = min(start + segment_len, length)
            lo, hi = max(0, start - self.halo), min(length, stop + self.halo)
            if rows_before is None:  # the first pass, which reads every row of u and checks it where u lives
                window = u[:, lo:hi]
                if value_checks_enabled(window) and not bool(torch.isfinite(window).all()):
                    raise ValueError(f"u contains NaN or infinite values (positions {lo} to {hi - 1})")
                rows = window.to(weight.device)
            else:
                rows = torch.cat([rows_before, u[:, start:hi].to(weight.device)], 1)
            seg = self.segment(rows if prepare is None else prepare(rows), start - lo, hi - stop)
            return seg, rows[:, start - lo:start - lo + stop - start]

        # every segment's summary goes into one block, allocated once: small tensors kept from one segment to
        # the next would sit between the segments' large temporaries and fragment the heap (memory growing with L)
        summaries = None
        for index, start in enumerate(starts):
            summary = self.segment_summary(segment_at(start, None)[0])
            if summaries is None:
                summaries = SegmentSummary(*(t.new_empty(len(starts), *t.shape) for t in summary))
            for block, part in zip(summaries, summary):
                block[index] = part
        entering = entering_states([SegmentSummary(*(block[index] for block in summaries))
                                    for index in range(len(starts))], self.initial_entering())
        # the last rows of u before the current segment, copied before out (possibly u) overwrites them
        rows_before = u.new_empty(batch, 0, self.d_model, device=weight.device)
        for start, ent in zip(starts, entering):
            seg, rows = segment_at(start, rows_before)
            y = self.segment_output(seg, ent)
            rows_before = torch.cat([rows_before, rows], 1)[:, -self.halo:].clone()
            out[:, start:start + segment_len] = (y if finish is None else finish(rows, y)).to(out.device)
        return out

    def materialize(self, u: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, H, L, L) matrix applied to the value stream x (after conv and
        activation): ``y[:, i, h] = sum_j M[:, h, i, j] x[:, j, h]`` before
        norm, gate and out_proj. Learnable initial states, if any, add an
        affine term that is not part of the matrix. With ``shift=False`` the
        diagonal holds both causal matrices' diagonals and D. With
        ``combine="concat"`` there is no such matrix (``combine_proj`` mixes the
        directions' channels): a ValueError."""
        if self.combine == "concat":
            raise ValueError("materialize: with combine='concat' the layer mixes the two directions' channels "
                             "(combine_proj) after the scans, so no (B, H, L, L) matrix gives its output")
        mask = self._check(u, attention_mask)
        if u.shape[0] == 0:
            return u.new_zeros(0, self.nheads, u.shape[1], u.shape[1])
        _, x, B_f, C_f, B_b, C_b, dt_f, dt_b = self._value_stream(u, mask)
        if self.shift:
            return quasiseparable_matrix(dt_f, dt_b, self._A(), B_f, C_f, B_b, C_b, D=self._diag(x))
        flip = lambda t: t.flip(1)  # noqa: E731
        M_f = semiseparable_matrix(dt_f, self._A(), B_f, C_f)
        M_b = semiseparable_matrix(flip(dt_b), self._A(), flip(B_b), flip(C_b))
        return combine_matrices(M_f, M_b, self._diag(x), shift=False)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, nheads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, chunk_size={self.chunk_size}, scan_impl={self.scan_impl!r}"
                + "".join(f", {name}={value!r}" for name, value, default in self._ablations() if value != default))

    def _ablations(self) -> list[tuple]:
        """(name, value, default) of each ablation option."""
        return [("shift", self.shift, True), ("per_token_diagonal", self.per_token_diagonal, True),
                ("combine", self.combine, "add"), ("shared_bc", self.shared_bc, False)]
