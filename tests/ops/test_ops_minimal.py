"""The loop-free scan (ops/minimal.py) against the float64 explicit matrix, forward and gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from hydra_ssm.ops import quasiseparable_chunked, quasiseparable_minimal, quasiseparable_ref
from hydra_ssm.ops.minimal import exclusive_cumsum, segment_sums

from helpers import hydra_inputs


@st.composite
def cases(draw):
    """Shapes at the edges (L = 1, L below / equal to / not a multiple of the chunk, chunk 1), groups,
    the three forms of D and of the initial states, step sizes of 0 and decays up to exp(-1e3) per step."""
    g = draw(st.sampled_from([1, 2]))
    return dict(b=draw(st.integers(1, 2)), l=draw(st.sampled_from([1, 2, 3, 5, 7, 8, 9, 13, 16, 17])),
                h=g * draw(st.sampled_from([1, 2])), p=draw(st.integers(1, 3)), g=g, n=draw(st.integers(1, 4)),
                q=draw(st.sampled_from([1, 2, 3, 4, 8, 32])), diag=draw(st.sampled_from(["none", "head", "token"])),
                states=draw(st.sampled_from(["none", "shared", "pair"])), zero_dt=draw(st.booleans()),
                decay=draw(st.sampled_from([1.0, 30.0, 1e3])), seed=draw(st.integers(0, 2**16)))


def make_args(c, requires_grad=False):
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = hydra_inputs(c["b"], c["l"], c["h"], c["p"], c["g"], c["n"],
                                                           diag=c["diag"], seed=c["seed"])
    A = A * c["decay"]
    if c["zero_dt"]:  # skip every third position in one direction, every other in the other
        dt_f = dt_f * (torch.arange(c["l"]) % 3 != 1)[None, :, None]
        dt_b = dt_b * (torch.arange(c["l"]) % 2 == 0)[None, :, None]
    gen = torch.Generator().manual_seed(c["seed"] + 7)
    shape = (c["b"], c["h"], c["p"], c["n"])
    init = {"none": None, "shared": torch.randn(shape[1:], generator=gen, dtype=torch.float64),
            "pair": (torch.randn(shape, generator=gen, dtype=torch.float64),
                     torch.randn(shape, generator=gen, dtype=torch.float64))}[c["states"]]
    args = [x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D]
    if requires_grad:
        args = [None if t is None else t.detach().requires_grad_() for t in args]
        if init is not None:
            init = (tuple(t.requires_grad_() for t in init) if isinstance(init, tuple)
                    else init.requires_grad_())
    return args, init


def leaves(args, init):
    out = [t for t in args if t is not None]
    return out + (list(init) if isinstance(init, tuple) else [] if init is None else [init])


@given(cases())
def test_minimal_equals_matrix(c):
    args, init = make_args(c)
    y = quasiseparable_minimal(*args, chunk_size=c["q"], initial_states=init)
    y_ref = quasiseparable_ref(*args, initial_states=init)
    assert y.shape == y_ref.shape and y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)


@given(cases())
def test_minimal_gradients_equal_matrix(c):
    """Gradients of every input (x, both dt, A, the four B/C, D, initial states) equal the reference's."""
    args, init = make_args(c, requires_grad=True)
    weight = torch.randn(c["b"], c["l"], c["h"], c["p"], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(c["seed"] + 3))
    grads = []
    for fn, kw in ((quasiseparable_ref, {}), (quasiseparable_minimal, {"chunk_size": c["q"]})):
        out = fn(*args, initial_states=init, **kw)
        grads.append(torch.autograd.grad((out * weight).sum(), leaves(args, init)))
    for g_min, g_ref in zip(*reversed(grads)):
        assert torch.isfinite(g_min).all()
        torch.testing.assert_close(g_min, g_ref, rtol=1e-8, atol=1e-8)


def test_minimal_gradcheck():
    # dt > 0 here: finite differences step dt by -1e-6, and the ops refuse negative dt (dt = 0 gradients are
    # compared with the reference's autograd in the hypothesis test above)
    args, init = make_args(dict(b=2, l=7, h=2, p=2, g=1, n=3, q=3, diag="token", states="pair", zero_dt=False,
                                decay=1.0, seed=0), requires_grad=True)
    n = len(args)
    assert gradcheck(lambda *a: quasiseparable_minimal(*a[:n], chunk_size=3, initial_states=(a[n], a[n + 1])),
                     (*args, *init))


def test_float32_large_decays_stay_exact():
    """Segment sums never subtract long cumulative sums: float32 keeps full accuracy at exp(-1e4) totals."""
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = hydra_inputs(1, 300, 2, 3, 1, 4, dt_scale=10.0)
    A = A * 5.0  # per-step decays down to exp(-55), totals near -1e4
    y32 = quasiseparable_minimal(*(t.float() for t in (x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)), chunk_size=64)
    y_ref = quasiseparable_ref(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D)
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), y_ref, rtol=1e-4, atol=1e-4 * float(y_ref.abs().max()))


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_minimal_equals_fused_float32(chunk_size):
    args = [None if t is None else t.float() for t in hydra_inputs(2, 37, 4, 8, 2, 4)]
    torch.testing.assert_close(quasiseparable_minimal(*args, chunk_size=chunk_size),
                               quasiseparable_chunked(*args, chunk_size=chunk_size), rtol=1e-5, atol=1e-5)


def test_segment_sums_and_exclusive_cumsum():
    log_a = torch.tensor([[0.5, -1.0, 2.0, -3.0]], dtype=torch.float64)
    E = segment_sums(log_a)[0]
    for i in range(4):
        for j in range(4):
            want = log_a[0, j + 1:i].sum() if j < i else float("-inf")
            assert E[i, j] == want, (i, j)
    torch.testing.assert_close(exclusive_cumsum(log_a), torch.tensor([[0.0, 0.5, -0.5, 1.5]], dtype=torch.float64))
    torch.testing.assert_close(exclusive_cumsum(log_a, reverse=True),
                               torch.tensor([[-2.0, -1.0, -3.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("batch, seqlen", [(0, 5), (2, 0)])
def test_minimal_empty_input(batch, seqlen):
    args = hydra_inputs(batch, seqlen, 2, 3, 1, 4, requires_grad=True)
    y = quasiseparable_minimal(*args, chunk_size=4)
    assert y.shape == (batch, seqlen, 2, 3)
    grads = torch.autograd.grad(y.sum(), [t for t in args if t is not None])
    assert all(g.shape == t.shape for g, t in zip(grads, [t for t in args if t is not None]))
