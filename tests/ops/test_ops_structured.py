"""Fast structured ops (Toeplitz, low-rank, Vandermonde, Cauchy) against their explicit matrices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hydra_ssm.ops import cauchy, low_rank, toeplitz, vandermonde
from hydra_ssm.ops._tiled import tile_sizes

# edges included: batch 0, length 0 and 1
shapes = dict(b=st.sampled_from([1, 2, 0]), L=st.sampled_from([1, 2, 5, 7, 13, 31, 0]), h=st.integers(1, 3),
              p=st.integers(1, 4), d=st.integers(1, 3), seed=st.integers(0, 1000))


pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_gradients(fast, ref, inputs, seed):
    """Outputs and the gradients of every input of ``fast`` equal those through the explicit matrix ``ref``."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    y_fast, y_ref = fast(*inputs), ref(*inputs)
    torch.testing.assert_close(y_fast, y_ref)
    w = rand(*y_ref.shape, seed=seed + 7)
    grads = [torch.autograd.grad((y * w).sum(), inputs, allow_unused=True, materialize_grads=True)
             for y in (y_fast, y_ref)]
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref)


@settings(max_examples=15, deadline=None)
@given(**shapes, shared=st.booleans())
def test_toeplitz_fft_matches_matrix(b, L, h, p, d, seed, shared):
    x = rand(b, L, h, p, seed=seed)
    lags = max(2 * L - 1, 0)
    k = rand(h, lags, seed=seed + 1) if shared else rand(b, h, lags, seed=seed + 1)
    assert_same_gradients(toeplitz.toeplitz_fft, toeplitz.toeplitz_ref, (x, k), seed)
    # float32 path stays accurate
    torch.testing.assert_close(toeplitz.toeplitz_fft(x.float(), k.float()), toeplitz.toeplitz_ref(x, k).float(),
                               rtol=1e-4, atol=1e-4)


def test_toeplitz_matrix_layout():
    k = torch.arange(5.0)[None]  # L = 3, lags -2..2
    T = toeplitz.toeplitz_matrix(k, 3)[0]
    assert T.tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]


@settings(max_examples=15, deadline=None)
@given(**shapes)
def test_low_rank(b, L, h, p, d, seed):
    x, q, k = rand(b, L, h, p, seed=seed), rand(b, L, h, d, seed=seed + 1), rand(L, h, d, seed=seed + 2)
    assert_same_gradients(low_rank.low_rank_mix, low_rank.low_rank_ref, (x, q, k), seed)


@settings(max_examples=15, deadline=None)
@given(**shapes, tile=st.sampled_from([None, 1, 3, 8]), col_tile=st.sampled_from([None, 1, 5, 12]),
       sign=st.sampled_from([-1.0, 1.0]))
def test_vandermonde_tiled(b, L, h, p, d, seed, tile, col_tile, sign):
    x, q, k = rand(b, L, h, p, seed=seed), 0.05 * rand(b, L, h, d, seed=seed + 1), 0.05 * rand(L, h, d, seed=seed + 2)
    assert_same_gradients(lambda *a: vandermonde.vandermonde_mix(*a, sign, tile=tile, col_tile=col_tile),
                          lambda *a: vandermonde.vandermonde_ref(*a, sign), (x, q, k), seed)


def test_vandermonde_float32_long_and_large_frequencies():
    """Angle-addition blocks stay accurate in float32 at a length with many column groups,
    and for frequencies far from the small-eps regime (arguments of many periods)."""
    for scale in (1e-3, 0.3):
        x, q, k = rand(1, 700, 2, 3, seed=1), scale * rand(1, 700, 2, 4, seed=2), scale * rand(700, 2, 4, seed=3)
        ref = vandermonde.vandermonde_ref(x, q, k)
        y = vandermonde.vandermonde_mix(x.float(), q.float(), k.float(), col_tile=300)
        err = (y.double() - ref).norm() / ref.norm()
        assert err < 1e-4, (scale, err)


@settings(max_examples=10, deadline=None)
@given(b=st.sampled_from([2, 0]), L=st.integers(1, 20), extra=st.integers(0, 9), seed=st.integers(0, 100))
def test_dft_cos(b, L, extra, seed):
    x = rand(b, L, 2, 3, seed=seed)
    torch.testing.assert_close(vandermonde.dft_cos_mix(x, L + extra), vandermonde.dft_cos_ref(x, L + extra))
    with pytest.raises(ValueError):
        vandermonde.dft_cos_mix(x, L - 1) if L > 1 else (_ for _ in ()).throw(ValueError())


@settings(max_examples=15, deadline=None)
@given(**shapes, tile=st.sampled_from([None, 1, 4, 6]), col_tile=st.sampled_from([None, 1, 3, 10]))
def test_cauchy_tiled(b, L, h, p, d, seed, tile, col_tile):
    x, q, k = rand(b, L, h, p, seed=seed), rand(b, L, h, d, seed=seed + 1).exp(), rand(L, h, d, seed=seed + 2).exp()
    assert_same_gradients(lambda *a: cauchy.cauchy_mix(*a, tile=tile, col_tile=col_tile), cauchy.cauchy_ref,
                          (x, q, k), seed)


@pytest.mark.parametrize("op", ["vandermonde", "cauchy", "toeplitz", "low_rank"])
def test_gradcheck(op):
    x = rand(2, 7, 2, 3, seed=1).requires_grad_()
    if op == "toeplitz":
        k = rand(2, 13, seed=2).requires_grad_()
        assert torch.autograd.gradcheck(toeplitz.toeplitz_fft, (x, k))
        return
    q, k = rand(2, 7, 2, 2, seed=3), rand(7, 2, 2, seed=4)
    if op == "vandermonde":
        q, k = 0.1 * q, 0.1 * k
        fn = lambda a, b, c: vandermonde.vandermonde_mix(a, b, c, -1.0, tile=3, col_tile=4)  # noqa: E731
    elif op == "cauchy":
        q, k = q.exp(), k.exp()
        fn = lambda a, b, c: cauchy.cauchy_mix(a, b, c, tile=3, col_tile=4)  # noqa: E731
    else:
        fn = low_rank.low_rank_mix
    assert torch.autograd.gradcheck(fn, (x, q.requires_grad_(), k.requires_grad_()))


def test_tile_size_bounds_memory():
    rows, cols = tile_sizes(4, 16384)
    assert rows * cols * 4 <= 1 << 20 and cols < 16384  # one block is far below L x L per head
    assert tile_sizes(1, 5) == (5, 5)
    assert tile_sizes(1, 5, 5) == (5, 5)
    assert tile_sizes(2, 100, 7, 9) == (7, 9)
    with pytest.raises(ValueError):
        tile_sizes(1, 5, 0)
    with pytest.raises(ValueError):
        tile_sizes(1, 5, None, -1)


def test_shape_errors():
    x = torch.zeros(1, 4, 2, 3)
    with pytest.raises(ValueError, match="kernel"):
        toeplitz.toeplitz_fft(x, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="q must"):
        cauchy.cauchy_mix(x, torch.zeros(4, 3, 2), torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="same last dimension"):
        low_rank.low_rank_mix(x, torch.zeros(4, 2, 2), torch.zeros(4, 2, 3))


@pytest.mark.parametrize("op", ["vandermonde", "cauchy", "toeplitz", "low_rank", "dft_cos"])
@pytest.mark.parametrize("which", ["x", "q", "k"])
def test_non_floating_inputs_are_rejected(op, which):
    """An integer input is refused (it used to give a truncated integer output or a torch error)."""
    x, q, k = torch.ones(1, 4, 2, 3), torch.ones(4, 2, 2), torch.ones(4, 2, 2)
    if op in ("toeplitz", "dft_cos") and which != "x":
        pytest.skip("one input besides x, checked below")
    args = dict(x=x, q=q, k=k)
    args[which] = args[which].long()
    call = {"vandermonde": lambda: vandermonde.vandermonde_mix(args["x"], args["q"], args["k"]),
            "cauchy": lambda: cauchy.cauchy_mix(args["x"], args["q"], args["k"]),
            "low_rank": lambda: low_rank.low_rank_mix(args["x"], args["q"], args["k"]),
            "toeplitz": lambda: toeplitz.toeplitz_fft(args["x"], torch.ones(2, 7)),
            "dft_cos": lambda: vandermonde.dft_cos_mix(args["x"], 4)}[op]
    with pytest.raises(TypeError, match=f"^{which} must be a floating-point tensor"):
        call()
    with pytest.raises(TypeError, match="^kernel must be a floating-point tensor"):
        toeplitz.toeplitz_fft(x, torch.ones(2, 7, dtype=torch.int32))
    with pytest.raises(ValueError, match="^k must be on x's device"):
        cauchy.cauchy_mix(x, q, k.to("meta"))
