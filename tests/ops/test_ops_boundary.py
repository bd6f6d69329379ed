"""A sequence computed in segments from the states at the cuts equals the whole sequence."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hydra_ssm.ops import quasiseparable_chunked, quasiseparable_ref
from hydra_ssm.ops.boundary import entering_state_readout, entering_states, segment_summary

from test_ops import DIAGS, STATES, close_scaled, gradients, initial_states, leaves_of, scan_inputs, shapes


def cut_points(draw, length):
    """Sorted cuts in [0, L], the ends included, with empty segments and cuts inside chunks allowed."""
    inner = draw(st.lists(st.integers(0, length), max_size=5))
    return [0, *sorted(inner), length]


def in_segments(args, init, cuts, chunk_size):
    """Hydra over the segments between ``cuts``, each from the states entering it, concatenated along L."""
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = args
    length = x.shape[1]
    segments = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    summaries = [segment_summary(x[:, s], dt_f[:, s], dt_b[:, s], A, B_f[:, s], B_b[:, s]) for s in segments]
    pair = init if isinstance(init, tuple) else (init, init)
    # output i reads C_f[i-1] and C_b[i+1] of the whole sequence (zero past its ends)
    C_f_read = F.pad(C_f, (0, 0, 0, 0, 1, 0))[:, :length]
    C_b_read = F.pad(C_b, (0, 0, 0, 0, 0, 1))[:, 1:]
    outputs = []
    for s, entering in zip(segments, entering_states(summaries, pair)):
        part = lambda t: None if t is None or t.dim() == 1 else t[:, s]  # noqa: E731
        D_s = D if D is None or D.dim() == 1 else D[:, s]
        y = quasiseparable_chunked(x[:, s], dt_f[:, s], dt_b[:, s], A, B_f[:, s], C_f[:, s], B_b[:, s], C_b[:, s],
                                   D_s, chunk_size=chunk_size)
        if entering.fwd is not None or entering.bwd is not None:
            y = y + entering_state_readout(part(dt_f), part(dt_b), A, part(C_f_read), part(C_b_read),
                                           entering.fwd, entering.bwd)
        outputs.append(y)
    return torch.cat(outputs, 1)


@given(shapes(), DIAGS, STATES, st.data())
def test_segments_equal_the_whole_sequence(s, diag, states, data):
    """Outputs and the gradients of every input, at the edges (dt 0, huge decays, L 1, empty segments)."""
    if s["l"] == 0 or s["b"] == 0:
        s = {**s, "l": max(s["l"], 1), "b": max(s["b"], 1)}
    args = scan_inputs(s, diag=diag, requires_grad=True)
    init = initial_states(s, states, requires_grad=True)
    cuts = cut_points(data.draw, s["l"])
    whole = quasiseparable_ref(*args, initial_states=init)
    parts = in_segments(args, init, cuts, s["q"])
    close_scaled(parts.detach(), whole.detach(), 1e-9)
    leaves = leaves_of(*args, init)
    weight = (torch.randn(whole.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(s["seed"])),)
    for g_parts, g_whole in zip(gradients((parts,), weight, leaves), gradients((whole,), weight, leaves)):
        close_scaled(g_parts, g_whole, 1e-8)


def test_summary_of_an_empty_segment_hands_on_nothing():
    x, dt_f, dt_b, A, B_f, _, B_b, _, _ = scan_inputs(dict(b=2, l=0, h=2, p=3, g=1, n=4, q=4, seed=0,
                                                           dt_scales=(1.0, 1.0), A="moderate", edge=0.0,
                                                           edge_fraction=0.0))
    summary = segment_summary(x, dt_f, dt_b, A, B_f, B_b)
    assert summary.state_fwd.shape == (2, 2, 3, 4) and not summary.state_fwd.any() and not summary.state_bwd.any()
    assert not summary.log_decay_fwd.any() and not summary.log_decay_bwd.any()


def test_bad_arguments_are_named():
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, _ = scan_inputs(dict(b=1, l=5, h=2, p=3, g=1, n=4, q=4, seed=0,
                                                              dt_scales=(1.0, 1.0), A="moderate", edge=0.0,
                                                              edge_fraction=0.0))
    with pytest.raises(ValueError, match="dt_bwd"):
        segment_summary(x, dt_f, dt_b[:, :3], A, B_f, B_b)
    with pytest.raises(ValueError, match="C_bwd_read"):
        entering_state_readout(dt_f, dt_b, A, C_f, C_b[:, :2], torch.zeros(1, 2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="state_fwd_in"):
        entering_state_readout(dt_f, dt_b, A, C_f, C_b, torch.zeros(1, 2, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs state_fwd_in"):
        entering_state_readout(dt_f, dt_b, A, C_f, C_b)
