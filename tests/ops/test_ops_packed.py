"""Packed batches (``cu_seqlens``): every scan equals running each sequence alone, outputs and gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hydra_ssm.ops import (quasiseparable_chunked, quasiseparable_minimal, quasiseparable_ref, quasiseparable_two_pass,
                           semiseparable_chunked, semiseparable_ref)

from helpers import hydra_inputs, ssm_inputs
from test_ops import A_KINDS, DIAGS, DT_SCALES, EDGE_DT, STATES, assert_gradients_close, close_scaled, gradient_case, \
    gradients, initial_states, leaves_of, ssd_inputs

SCANS = {"chunked": quasiseparable_chunked, "two_pass": quasiseparable_two_pass, "minimal": quasiseparable_minimal}
# lengths of 1, multiples of the chunk sizes below and not, and empty sequences
LENGTH = st.sampled_from([1, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 0])


@st.composite
def packed_shapes(draw):
    """The shapes of test_ops' strategy for one packed row: a list of lengths (boundaries inside chunks, on
    chunk edges, chunks of 1 and longer than the whole row), the same edge step sizes and decays."""
    g = draw(st.sampled_from([1, 2]))
    lengths = draw(st.lists(LENGTH, min_size=1, max_size=6))
    return dict(b=1, l=sum(lengths), lengths=lengths, h=g * draw(st.sampled_from([1, 2])), p=draw(st.integers(1, 3)),
                g=g, n=draw(st.integers(1, 4)), q=draw(st.sampled_from([1, 2, 3, 4, 8, 64])),
                seed=draw(st.integers(0, 2 ** 16)), dt_scales=(draw(DT_SCALES), draw(DT_SCALES)),
                A=draw(st.sampled_from(list(A_KINDS))), edge=draw(EDGE_DT),
                edge_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])))


def offsets(lengths, dtype=torch.int32):
    return torch.tensor([0, *lengths], dtype=dtype).cumsum(0).to(dtype)


def alone(c, lengths):
    """The reference run on each sequence by hand (slices of the packed inputs), concatenated."""
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = c.args
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        start += n
        d = D[:, sl] if D is not None and D.dim() == 3 else D
        outs.append(quasiseparable_ref(x[:, sl], dt_f[:, sl], dt_b[:, sl], A, B_f[:, sl], C_f[:, sl], B_b[:, sl],
                                       C_b[:, sl], d, initial_states=c.init))
    return torch.cat(outs, dim=1)


@given(packed_shapes(), DIAGS, STATES)
def test_packed_scans_equal_each_sequence_alone(s, diag, states):
    """Outputs and the gradients of every input (x, both dt, A, the four projections, D, the initial states,
    shared by every sequence) of each scan on the packed row, against the float64 reference run on each
    sequence alone."""
    c = gradient_case(s, diag, states)
    cu = offsets(s["lengths"])
    y_ref = alone(c, s["lengths"])
    ref = gradients((y_ref,), c.weight, c.leaves)
    close_scaled(quasiseparable_ref(*c.args, initial_states=c.init, cu_seqlens=cu).detach(), y_ref.detach(), 1e-12)
    for name, fn in SCANS.items():
        y = fn(*c.args, chunk_size=s["q"], initial_states=c.init, cu_seqlens=cu)
        close_scaled(y.detach(), y_ref.detach(), 1e-10)
        assert_gradients_close(gradients((y,), c.weight, c.leaves), ref, c.names, f"packed {name}")


def test_packing_changes_the_result_of_an_unaware_scan():
    """The packed row run as one sequence differs from the sequences run alone (at the boundary, in both
    directions): the comparison above can fail."""
    lengths = [5, 3, 6]
    args = hydra_inputs(1, sum(lengths), 2, 2, 1, 3)
    cu = offsets(lengths)
    packed = quasiseparable_chunked(*args, chunk_size=4, cu_seqlens=cu)
    whole = quasiseparable_chunked(*args, chunk_size=4)
    per_position = (packed - whole).abs().amax((0, 2, 3))
    assert bool((per_position > 1e-6).all())  # every position reads across some boundary in the unaware run
    torch.testing.assert_close(packed, quasiseparable_ref(*args, cu_seqlens=cu), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_offsets_of_either_integer_dtype_and_float32_inputs(dtype):
    lengths = [7, 1, 12]
    args = [None if t is None else t.float() for t in hydra_inputs(1, sum(lengths), 4, 2, 2, 3)]
    y = quasiseparable_chunked(*args, chunk_size=4, cu_seqlens=offsets(lengths, dtype))
    assert y.dtype == torch.float32
    y_ref = quasiseparable_ref(*args, cu_seqlens=offsets(lengths, dtype))
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


def causal_alone(x, dt, A, B, C, s0, lengths):
    """The causal reference run on each sequence by hand: outputs concatenated along L, final states stacked."""
    ys, finals, start = [], [], 0
    for n in lengths:
        sl = slice(start, start + n)
        start += n
        y, final = semiseparable_ref(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], initial_states=s0,
                                     return_final_states=True)
        ys.append(y)
        finals.append(final)
    return torch.cat(ys, dim=1), torch.cat(finals)


@given(packed_shapes(), st.sampled_from(["none", "shared", "batched"]))
def test_packed_causal_scan_equals_each_sequence_alone(s, state):
    """The causal SSD on a packed row: outputs, one final state per sequence (an empty one hands on its
    initial state), and the gradients of x, dt, A, B, C and the initial state (entering every sequence)
    through both, against the float64 reference run on each sequence alone."""
    x, dt, A, B, C = ssd_inputs(s, requires_grad=True)
    s0 = {"none": None, "shared": initial_states(s, "shared", requires_grad=True),
          "batched": initial_states(s, "pair", requires_grad=True)[0]}[state]  # (H, P, N) or (1, H, P, N)
    leaves = leaves_of(x, dt, A, B, C, s0)
    names = ["x", "dt", "A", "B", "C", "initial_states"][:len(leaves)]
    cu = offsets(s["lengths"])
    y_ref, final_ref = causal_alone(x, dt, A, B, C, s0, s["lengths"])
    assert final_ref.shape == (len(s["lengths"]), s["h"], s["p"], s["n"])
    gen = torch.Generator().manual_seed(s["seed"] + 2)
    weights = (torch.randn(y_ref.shape, generator=gen, dtype=torch.float64),
               torch.randn(final_ref.shape, generator=gen, dtype=torch.float64))
    ref = gradients((y_ref, final_ref), weights, leaves)
    for name, fn in {"semiseparable_chunked": lambda *a, **k: semiseparable_chunked(*a, chunk_size=s["q"], **k),
                     "semiseparable_ref": semiseparable_ref}.items():
        y, final = fn(x, dt, A, B, C, initial_states=s0, return_final_states=True, cu_seqlens=cu)
        close_scaled(y.detach(), y_ref.detach(), 1e-10)
        close_scaled(final.detach(), final_ref.detach(), 1e-10)
        assert_gradients_close(gradients((y, final), weights, leaves), ref, names, f"packed {name}")
        y_only = fn(x, dt, A, B, C, initial_states=s0, cu_seqlens=cu)
        assert torch.equal(y_only, y)


def test_packing_changes_the_result_of_an_unaware_causal_scan():
    """Run as one sequence, the packed row differs from the sequences run alone after the first boundary (the
    state crosses it), and so does the final state: the comparison above can fail."""
    lengths = [5, 3, 6]
    x, dt, A, B, C = ssm_inputs(1, sum(lengths), 2, 2, 1, 3)
    cu = offsets(lengths)
    packed, finals = semiseparable_chunked(x, dt, A, B, C, chunk_size=4, return_final_states=True, cu_seqlens=cu)
    whole, final = semiseparable_chunked(x, dt, A, B, C, chunk_size=4, return_final_states=True)
    per_position = (packed - whole).abs().amax((0, 2, 3))
    assert bool((per_position[5:] > 1e-6).all()) and bool((per_position[:5] == 0).all())
    assert finals.shape == (3, 2, 2, 3) and float((finals[-1] - final[0]).abs().max()) > 1e-6


def causal_chunked(x, dt, _dt_bwd, A, B, C, *_, cu_seqlens):
    """The causal scans called with Hydra's arguments (the forward direction), as the tests below pass them."""
    return semiseparable_chunked(x, dt, A, B, C, chunk_size=3, cu_seqlens=cu_seqlens)


def causal_ref(x, dt, _dt_bwd, A, B, C, *_, cu_seqlens):
    return semiseparable_ref(x, dt, A, B, C, cu_seqlens=cu_seqlens)


BAD_OFFSETS = [
    ([0, 3, 9], "must end at the packed length 10"),
    ([1, 3, 10], "must start at 0"),
    ([0, 6, 3, 10], "must be non-decreasing"),
    (torch.tensor([0.0, 10.0]), "integer tensor"),
    (torch.tensor([[0, 10]]), "shape \\(num_sequences \\+ 1,\\)"),
    (torch.zeros(0, dtype=torch.int32), "shape \\(num_sequences \\+ 1,\\)"),
    ([0, 10], "torch.Tensor"),
]


@pytest.mark.parametrize("scan", [*SCANS.values(), quasiseparable_ref, causal_chunked, causal_ref])
@pytest.mark.parametrize("bad, message", BAD_OFFSETS)
def test_bad_offsets_are_rejected_naming_cu_seqlens(scan, bad, message):
    args = hydra_inputs(1, 10, 2, 2, 1, 3)
    cu = torch.tensor(bad, dtype=torch.int32) if isinstance(bad, list) and message != "torch.Tensor" else bad
    with pytest.raises((ValueError, TypeError), match=f"cu_seqlens.*{message}|{message}"):
        scan(*args, cu_seqlens=cu)


@pytest.mark.parametrize("scan", [*SCANS.values(), quasiseparable_ref, causal_chunked, causal_ref])
def test_packed_inputs_must_be_one_row(scan):
    args = hydra_inputs(2, 5, 2, 2, 1, 3)
    with pytest.raises(ValueError, match="cu_seqlens.*one packed row.*got batch 2"):
        scan(*args, cu_seqlens=offsets([2, 3]))


def test_no_sequences_and_only_empty_sequences_give_an_empty_output():
    args = hydra_inputs(1, 0, 2, 2, 1, 3, requires_grad=True)
    for cu in (offsets([]), offsets([0, 0])):
        y = quasiseparable_chunked(*args, chunk_size=4, cu_seqlens=cu)
        assert y.shape == (1, 0, 2, 2)
        y.sum().backward()
    assert args[0].grad.shape == args[0].shape


def test_causal_scan_of_no_sequences_and_of_empty_sequences():
    """No sequence: an empty output and no final state; empty sequences: their initial state as final state."""
    x, dt, A, B, C = ssm_inputs(1, 0, 2, 2, 1, 3)
    s0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    for fn in (semiseparable_chunked, semiseparable_ref):
        y, final = fn(x, dt, A, B, C, initial_states=s0, return_final_states=True, cu_seqlens=offsets([]))
        assert y.shape == (1, 0, 2, 2) and final.shape == (0, 2, 2, 3)
        y, final = fn(x, dt, A, B, C, initial_states=s0, return_final_states=True, cu_seqlens=offsets([0, 0]))
        assert torch.equal(final, torch.stack([s0, s0]))
        (grad,) = torch.autograd.grad(final.sum(), s0)
        assert torch.equal(grad, torch.full_like(s0, 2.0))
