"""Hydra computed segment by segment (Hydra.stream, Hydra.segment_output) equals Hydra.forward."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_ssm.mixers import Hydra
from hydra_ssm.ops.boundary import entering_states


def layer(d_conv=7, chunk_size=4, learnable_init_states=False, seed=0):
    torch.manual_seed(seed)
    m = Hydra(16, d_state=4, headdim=8, d_conv=d_conv, chunk_size=chunk_size,
              learnable_init_states=learnable_init_states).double()
    if learnable_init_states:
        torch.nn.init.normal_(m.init_states)
    return m


@settings(deadline=None, max_examples=40)
@given(length=st.integers(1, 40), segment_len=st.integers(1, 45), d_conv=st.sampled_from([1, 3, 7]),
       chunk_size=st.sampled_from([1, 4, 64]), learned=st.booleans(), batch=st.integers(1, 2))
def test_stream_equals_forward(length, segment_len, d_conv, chunk_size, learned, batch):
    m = layer(d_conv, chunk_size, learned)
    u = torch.randn(batch, length, 16, dtype=torch.float64)
    with torch.no_grad():
        whole = m(u)
    torch.testing.assert_close(m.stream(u, segment_len), whole, rtol=1e-10, atol=1e-12)
    out = torch.full_like(u, float("nan"))
    assert m.stream(u, segment_len, out=out) is out
    torch.testing.assert_close(out, whole, rtol=1e-10, atol=1e-12)


@settings(deadline=None, max_examples=25)
@given(length=st.integers(1, 30), segment_len=st.integers(1, 35), d_conv=st.sampled_from([1, 3, 7]),
       learned=st.booleans())
def test_stream_in_place_with_a_block_around_the_layer(length, segment_len, d_conv, learned):
    """out=u overwrites rows that later segments' windows read; prepare and finish act per position."""
    m = layer(d_conv, 4, learned)
    norm = torch.nn.LayerNorm(16).double()
    torch.nn.init.normal_(norm.weight)
    u = torch.randn(2, length, 16, dtype=torch.float64)
    with torch.no_grad():
        want = torch.tanh(u + m(norm(u)))
    buffer = u.clone()
    assert m.stream(buffer, segment_len, out=buffer, prepare=norm, finish=lambda rows, y: torch.tanh(rows + y)) \
        is buffer
    torch.testing.assert_close(buffer, want, rtol=1e-10, atol=1e-12)
    alone = u.clone()
    torch.testing.assert_close(m.stream(alone, segment_len, out=alone), m(u).detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cuts", [[0, 9, 20], [0, 1, 2, 17, 20], [0, 20]])
def test_segment_gradients_equal_forward(cuts):
    """Segments computed together under autograd give forward's gradients (what context parallelism relies on)."""
    m = layer(learnable_init_states=True)
    u = torch.randn(2, 20, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 20, 16, dtype=torch.float64)
    params = [u, *m.parameters()]
    want = torch.autograd.grad((m(u) * weight).sum(), params)
    segments = []
    for start, stop in zip(cuts[:-1], cuts[1:]):
        lo, hi = max(0, start - m.halo), min(20, stop + m.halo)
        segments.append(m.segment(u[:, lo:hi], start - lo, hi - stop))
    entering = entering_states([m.segment_summary(s) for s in segments], m.initial_entering())
    out = torch.cat([m.segment_output(s, e) for s, e in zip(segments, entering)], 1)
    got = torch.autograd.grad((out * weight).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_stream_bad_arguments():
    m = layer()
    u = torch.randn(1, 10, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="segment_len"):
        m.stream(u, 0)
    with pytest.raises(ValueError, match="out must be"):
        m.stream(u, 4, out=torch.empty(1, 9, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        m.stream(u.float(), 4)
    bad = u.clone()
    bad[0, 7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.stream(bad, 4)
