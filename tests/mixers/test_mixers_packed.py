"""Packed batches (``cu_seqlens``) through the mixers: Hydra's own path and the base class's default."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_ssm.mixers import build_mixer

from test_hydra import make, reference_forward


def offsets(lengths):
    return torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)


def pieces(u, lengths):
    """The slices of the packed row u (1, total, D), one per sequence (empty ones included)."""
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    return [u[:, a:b] for a, b in zip(starts[:-1], starts[1:])]


def run_alone(m, u, lengths):
    """Each non-empty sequence through the layer on its own (no mask, no packing), concatenated."""
    return torch.cat([m(p) for p in pieces(u, lengths) if p.shape[1]], dim=1)


def param_grads(m, out, weight):
    m.zero_grad()
    (out * weight).sum().backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 13, 0]), min_size=1, max_size=5).filter(sum),
       chunk=st.sampled_from([1, 2, 4, 64]), d_conv=st.sampled_from([1, 3, 5, 7]), ngroups=st.sampled_from([1, 2]),
       init=st.booleans(), scan_impl=st.sampled_from(["fused", "two_pass", "minimal"]), seed=st.integers(0, 100))
def test_hydra_packed_equals_each_sequence_alone(lengths, chunk, d_conv, ngroups, init, scan_impl, seed):
    """Output and every parameter's gradient (conv and learnable initial states included) of a packed row,
    against the layer run on each sequence alone; outputs also against the independent transcription of
    the reference layer (a per-token recurrence). float64."""
    m = make(seed, chunk_size=chunk, d_conv=d_conv, ngroups=ngroups, learnable_init_states=init, scan_impl=scan_impl)
    if init:
        with torch.no_grad():
            m.init_states.normal_()
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, sum(lengths), 16, generator=gen, dtype=torch.float64)
    weight = torch.randn(u.shape, generator=gen, dtype=torch.float64)
    packed = m(u, cu_seqlens=offsets(lengths))
    alone = run_alone(m, u, lengths)
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
    by_hand = torch.cat([reference_forward(m, p) for p in pieces(u, lengths) if p.shape[1]], dim=1)
    torch.testing.assert_close(packed, by_hand, rtol=1e-9, atol=1e-9)
    got, want = param_grads(m, packed, weight), param_grads(m, alone, weight)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")


def test_hydra_packed_differs_from_the_row_run_as_one_sequence():
    """The comparison above can fail: without the offsets, the conv and both scans cross the boundaries."""
    m = make(0)
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    cu = offsets([5, 7])
    assert not torch.allclose(m(u, cu_seqlens=cu), m(u), atol=1e-6)
    assert torch.allclose(m.forward_packed(u, cu), m(u, cu_seqlens=cu), rtol=0, atol=0)


def test_hydra_packed_bad_inputs():
    m = make(0)
    u = torch.randn(1, 6, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="attention_mask.*cu_seqlens.*not both"):
        m(u, attention_mask=torch.ones(1, 6), cu_seqlens=offsets([6]))
    with pytest.raises(ValueError, match="cu_seqlens must end at the packed length 6"):
        m(u, cu_seqlens=offsets([2, 3]))
    with pytest.raises(ValueError, match="one packed row.*got batch 2"):
        m(torch.randn(2, 3, 16, dtype=torch.float64), cu_seqlens=offsets([1, 2]))
    with pytest.raises(TypeError, match="cu_seqlens must be an integer tensor"):
        m(u, cu_seqlens=torch.tensor([0.0, 6.0]))


@pytest.mark.parametrize("name, kw", [("mha", {"num_heads": 2}), ("toeplitz", {"headdim": 8, "d_conv": 3, "max_seq_len": 32}),
                                      ("quasiseparable", {"headdim": 8, "d_conv": 3})])
def test_default_packed_path_equals_each_sequence_alone(name, kw):
    """The base class's unpack-run-pack path (attention, a matrix mixer): outputs and parameter gradients."""
    torch.manual_seed(0)
    m = build_mixer(name, 16, **kw).double()
    lengths = [3, 0, 7, 1, 5]
    u = torch.randn(1, sum(lengths), 16, dtype=torch.float64)
    weight = torch.randn(u.shape, dtype=torch.float64)
    packed = m.forward_packed(u, offsets(lengths))
    alone = run_alone(m, u, lengths)
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
    got, want = param_grads(m, packed, weight), param_grads(m, alone, weight)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(m(u), packed, atol=1e-6)  # the row as one sequence mixes across the boundaries
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        m.forward_packed(u, torch.tensor([0, 9, 3, 16], dtype=torch.int32))
