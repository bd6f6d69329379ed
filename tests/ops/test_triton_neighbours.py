"""Triton kernels of the scan's neighbours in the Hydra layer (ops/triton/norm.py, ops/triton/conv.py):
the gated RMSNorm and the depthwise conv + SiLU, outputs and every input's gradient against float64
references. Without CUDA the kernels run on CPU tensors in Triton's interpreter (slow: tiny shapes)."""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    # before the kernels are defined, i.e. before the modules below are imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from hydra_ssm.mixers.common import in_proj_and_conv  # noqa: E402
from hydra_ssm.mixers.norm import GatedRMSNorm, gated_rms_norm_ref  # noqa: E402
from hydra_ssm.ops.triton.conv import depthwise_conv_silu_triton  # noqa: E402
from hydra_ssm.ops.triton.norm import MAX_ROW_BYTES, gated_rms_norm_triton  # noqa: E402

from test_ops import close_scaled, gradients  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Relative tolerance of each input dtype against the float64 reference: float64 and float32 are computed in
# their own precision; the half types are computed in float32 and rounded once (about one ulp, two allowed).
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# (dtype, with the optional input): every dtype, and both ways in float64 (the interpreter is slow). bf16 runs
# in the interpreter too: these kernels have no tl.dot (which the interpreter gets wrong in bf16).
DTYPE_CASES = [(torch.float64, True), (torch.float64, False), (torch.float32, False), (torch.float16, True),
               (torch.bfloat16, True)]


def rand(gen, *shape, dtype, scale=1.0):
    """Standard normal values drawn in float64 (the same for every dtype), on DEVICE."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


def leaves(*tensors):
    """Fresh leaves requiring grad, the None inputs left out."""
    return [t.detach().clone().requires_grad_() for t in tensors if t is not None]


def check_against_reference(fast_fn, ref_fn, inputs, dtype):
    """fast_fn(*inputs) and its gradients in each input against ref_fn on the same values in float64
    (a None input stays None); results keep their inputs' dtypes."""
    fast_in = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    ref_in = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    out = fast_fn(*fast_in)
    ref = ref_fn(*ref_in)
    assert out.dtype == dtype and out.shape == ref.shape
    close_scaled(out.double(), ref.detach(), TOL[dtype])
    gen = torch.Generator().manual_seed(7)
    weights = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(device=DEVICE, dtype=dtype)
    grads = gradients([out], [weights], [t for t in fast_in if t is not None])
    ref_grads = gradients([ref], [weights.double()], [t for t in ref_in if t is not None])
    for leaf, grad, ref_grad in zip([t for t in fast_in if t is not None], grads, ref_grads):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
        close_scaled(grad.double(), ref_grad, TOL[dtype])


# ---------------------------------------------------------------- gated RMSNorm


def norm_inputs(shape, has_z, dtype, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = rand(gen, *shape, dtype=dtype, scale=scale)
    z = rand(gen, *shape, dtype=dtype, scale=3.0) if has_z else None
    weight = rand(gen, shape[-1], dtype=dtype)
    return x, z, weight


@pytest.mark.parametrize("dtype, has_z", DTYPE_CASES)
@pytest.mark.parametrize("shape", [(1, 1), (9, 7), (2, 3, 33), (0, 5), (2, 0, 6)])
def test_gated_rms_norm_matches_reference(shape, has_z, dtype):
    """Rows not a power of two wide, rows not shared evenly by the backward's programs, no rows at all."""
    x, z, weight = norm_inputs(shape, has_z, dtype)
    check_against_reference(lambda x, z, w: gated_rms_norm_triton(x, z, w, 1e-5),
                            lambda x, z, w: gated_rms_norm_ref(x, z, w, 1e-5), [x, z, weight], dtype)


@settings(max_examples=8)
@given(rows=st.sampled_from([0, 1, 2, 5, 9]), d=st.sampled_from([1, 2, 3, 16, 33, 300]), has_z=st.booleans(),
       eps=st.sampled_from([1e-5, 1.0]), scale=st.sampled_from([1.0, 1e-4, 0.0, 1e3]), seed=st.integers(0, 2 ** 16))
def test_gated_rms_norm_hypothesis(rows, d, has_z, eps, scale, seed):
    """float64 over small shapes; rows of tiny (eps dominates), zero and huge values."""
    x, z, weight = norm_inputs((rows, d), has_z, torch.float64, seed, scale)
    check_against_reference(lambda x, z, w: gated_rms_norm_triton(x, z, w, eps),
                            lambda x, z, w: gated_rms_norm_ref(x, z, w, eps), [x, z, weight], torch.float64)


def test_gated_rms_norm_strided_inputs_and_expanded_gradient():
    """x a slice of a wider projection (rows further apart than d), z a transposed view, weight strided,
    and the gradient of out.sum() (stride 0 everywhere)."""
    gen = torch.Generator().manual_seed(1)
    wide = rand(gen, 2, 5, 11, dtype=torch.float64).requires_grad_()
    zt = rand(gen, 5, 2, 6, dtype=torch.float64).requires_grad_()
    w2 = rand(gen, 12, dtype=torch.float64).requires_grad_()
    x, z, weight = wide[..., 3:9], zt.transpose(0, 1), w2[::2]
    out = gated_rms_norm_triton(x, z, weight, 1e-5)
    grads = torch.autograd.grad(out.sum(), [wide, zt, w2])
    ref = gated_rms_norm_ref(x, z, weight, 1e-5)
    ref_grads = torch.autograd.grad(ref.sum(), [wide, zt, w2])
    close_scaled(out, ref.detach(), TOL[torch.float64])
    for grad, ref_grad in zip(grads, ref_grads):
        close_scaled(grad, ref_grad, TOL[torch.float64])


def test_gated_rms_norm_equals_the_layer():
    """With the parameters of a GatedRMSNorm layer (the layer the kernel is for), gradients included."""
    norm = GatedRMSNorm(6, eps=1e-5, device=DEVICE, dtype=torch.float32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, z, _ = norm_inputs((2, 3, 6), True, torch.float32, seed=2)
    x.requires_grad_()
    out = gated_rms_norm_triton(x, z, norm.weight, norm.eps)
    (dx, dw) = torch.autograd.grad(out.square().sum(), [x, norm.weight])
    ref = norm(x, z)
    (ref_dx, ref_dw) = torch.autograd.grad(ref.square().sum(), [x, norm.weight])
    for a, b in ((out, ref), (dx, ref_dx), (dw, ref_dw)):
        close_scaled(a.detach(), b.detach(), TOL[torch.float32])


@pytest.mark.parametrize("call, error, match", [
    (lambda x, z, w: gated_rms_norm_triton(x, z[:, :5], w, 1e-5), ValueError, "z must have x's shape"),
    (lambda x, z, w: gated_rms_norm_triton(x, z, w[:5], 1e-5), ValueError, r"weight must have shape \(d,\)"),
    (lambda x, z, w: gated_rms_norm_triton(x, z, w[:, None], 1e-5), ValueError, "weight must have shape"),
    (lambda x, z, w: gated_rms_norm_triton(x.long(), z, w, 1e-5), TypeError, "x must be a floating-point"),
    (lambda x, z, w: gated_rms_norm_triton(x, z.int(), w, 1e-5), TypeError, "z must be a floating-point"),
    (lambda x, z, w: gated_rms_norm_triton(x, z, w, 0.0), ValueError, "eps must be a positive number"),
    (lambda x, z, w: gated_rms_norm_triton(x, z, w, float("nan")), ValueError, "eps must be a positive number"),
    (lambda x, z, w: gated_rms_norm_triton(x[:, :0], None, w[:0], 1e-5), ValueError, "d >= 1"),
    (lambda x, z, w: gated_rms_norm_triton(x.sum(), None, w, 1e-5), ValueError, "d >= 1"),
])
def test_gated_rms_norm_bad_input(call, error, match):
    x, z, weight = norm_inputs((3, 6), True, torch.float32)
    with pytest.raises(error, match=match):
        call(x, z, weight)


def test_gated_rms_norm_refuses_rows_wider_than_a_program_holds():
    d = MAX_ROW_BYTES // 2 + 1
    x = torch.zeros(1, d, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match=f"at most {MAX_ROW_BYTES // 2} wide in torch.float16"):
        gated_rms_norm_triton(x, None, torch.ones(d, device=DEVICE), 1e-5)


# ---------------------------------------------------------------- depthwise conv + SiLU


def conv_ref(x, weight, bias):
    """Hydra's conv as nn.Conv1d computes it, over (B, C, L), then SiLU."""
    k = weight.shape[2]
    return F.silu(F.conv1d(x.transpose(1, 2), weight, bias, padding=k // 2, groups=x.shape[2])).transpose(1, 2)


def conv_inputs(b, l, c, k, has_bias, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = rand(gen, b, l, c, dtype=dtype)
    weight = rand(gen, c, 1, k, dtype=dtype, scale=0.5)
    bias = rand(gen, c, dtype=dtype) if has_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype, has_bias", DTYPE_CASES)
@pytest.mark.parametrize("b, l, c, k", [(2, 1, 3, 7), (2, 3, 5, 7), (1, 67, 3, 7), (1, 4, 70, 3), (2, 9, 6, 1),
                                        (0, 4, 3, 3)])
def test_conv_silu_matches_reference(b, l, c, k, has_bias, dtype):
    """L = 1, L < K, positions and channels over more than one tile, K = 1, batch 0."""
    check_against_reference(depthwise_conv_silu_triton, conv_ref, list(conv_inputs(b, l, c, k, has_bias, dtype)),
                            dtype)


def test_conv_silu_length_zero():
    """Length 0 (which F.conv1d refuses): an empty output, zero gradients for weight and bias."""
    x, weight, bias = leaves(*conv_inputs(2, 0, 3, 5, True, torch.float32))
    out = depthwise_conv_silu_triton(x, weight, bias)
    assert out.shape == (2, 0, 3) and out.dtype == torch.float32
    dx, dweight, dbias = torch.autograd.grad(out.sum(), [x, weight, bias])
    assert dx.shape == x.shape
    assert torch.equal(dweight, torch.zeros_like(weight)) and torch.equal(dbias, torch.zeros_like(bias))


@settings(max_examples=8)
@given(b=st.sampled_from([0, 1, 2]), l=st.sampled_from([1, 2, 3, 8, 13]), c=st.sampled_from([1, 3, 17]),
       k=st.sampled_from([1, 3, 5, 7]), has_bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_conv_silu_hypothesis(b, l, c, k, has_bias, seed):
    check_against_reference(depthwise_conv_silu_triton, conv_ref,
                            list(conv_inputs(b, l, c, k, has_bias, torch.float64, seed)), torch.float64)


def test_conv_silu_reads_a_slice_of_the_projection_like_the_layer():
    """The layer's own Conv1d (in_proj_and_conv) applied to a channel slice of a wider projection, read in
    place, and the gradient of out.sum() (stride 0 everywhere)."""
    _, conv1d = in_proj_and_conv(4, 20, 9, 7, None, False, True, dict(device=DEVICE, dtype=torch.float64))
    gen = torch.Generator().manual_seed(3)
    proj = rand(gen, 2, 5, 20, dtype=torch.float64).requires_grad_()
    xBC = proj[..., 6:15]
    out = depthwise_conv_silu_triton(xBC, conv1d.weight, conv1d.bias)
    leaves_ = [proj, conv1d.weight, conv1d.bias]
    grads = torch.autograd.grad(out.sum(), leaves_)
    ref = F.silu(conv1d(xBC.transpose(1, 2))).transpose(1, 2)
    ref_grads = torch.autograd.grad(ref.sum(), leaves_)
    close_scaled(out, ref.detach(), TOL[torch.float64])
    for grad, ref_grad in zip(grads, ref_grads):
        close_scaled(grad, ref_grad, TOL[torch.float64])


def test_conv_silu_reads_channels_first_storage():
    """xBC a (B, L, C) view of (B, C, L) storage (channels not adjacent) gives the same as its copy."""
    gen = torch.Generator().manual_seed(5)
    storage = rand(gen, 2, 4, 6, dtype=torch.float64)
    _, weight, bias = conv_inputs(2, 6, 4, 5, True, torch.float64)
    check_against_reference(lambda x, w, b: depthwise_conv_silu_triton(x.transpose(1, 2), w, b),
                            lambda x, w, b: conv_ref(x.transpose(1, 2), w, b), [storage, weight, bias], torch.float64)


@pytest.mark.parametrize("call, error, match", [
    (lambda x, w, b: depthwise_conv_silu_triton(x[0], w, b), ValueError, r"xBC must have shape \(batch, seqlen"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w[:4], b), ValueError, r"weight must have shape \(channels, 1"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w[:, 0], b), ValueError, "weight must have shape"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w[..., :2], b), ValueError, "kernel size must be odd"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w[..., :0], b), ValueError, "K >= 1"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w, b[:4]), ValueError, r"bias must have shape \(channels,\)"),
    (lambda x, w, b: depthwise_conv_silu_triton(x.long(), w, b), TypeError, "xBC must be a floating-point"),
    (lambda x, w, b: depthwise_conv_silu_triton(x, w, b.int()), TypeError, "bias must be a floating-point"),
])
def test_conv_silu_bad_input(call, error, match):
    x, weight, bias = conv_inputs(2, 4, 5, 3, True, torch.float32)
    with pytest.raises(error, match=match):
        call(x, weight, bias)


def test_compiled_kernels_refuse_cpu_tensors(monkeypatch):
    """Outside the interpreter CPU tensors get a clear error, not a crash inside Triton."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, z, weight = norm_inputs((2, 3), True, torch.float32)
    with pytest.raises(ValueError, match="x must be a CUDA tensor.*TRITON_INTERPRET=1"):
        gated_rms_norm_triton(x.cpu(), z.cpu(), weight.cpu(), 1e-5)
    x, weight, bias = conv_inputs(1, 3, 2, 3, True, torch.float32)
    with pytest.raises(ValueError, match="xBC must be a CUDA tensor.*TRITON_INTERPRET=1"):
        depthwise_conv_silu_triton(x.cpu(), weight.cpu(), bias.cpu())


def test_mixed_dtypes_keep_each_inputs_dtype():
    """Half-precision activations with float32 parameters (a layer under autocast): outputs in the activations'
    dtype, each gradient in its input's dtype."""
    x, z, _ = norm_inputs((3, 6), True, torch.bfloat16)
    weight = norm_inputs((6,), False, torch.float32, seed=4)[0]
    check_against_reference(lambda x, z, w: gated_rms_norm_triton(x, z, w, 1e-5),
                            lambda x, z, w: gated_rms_norm_ref(x, z, w, 1e-5), [x, z, weight], torch.bfloat16)
    x = conv_inputs(2, 5, 3, 3, False, torch.float16)[0]
    _, weight, bias = conv_inputs(2, 5, 3, 3, True, torch.float32)
    check_against_reference(depthwise_conv_silu_triton, conv_ref, [x, weight, bias], torch.float16)


# ---------------------------------------------------------------- torch.compile


def test_custom_ops_registrations():
    """Schemas, fake tensors and autograd registrations of the four ops (forward and backward), as torch.library
    checks them; one optional input given, the other None (both given: the torch.compile test below)."""
    x, z, weight = leaves(*norm_inputs((3, 5), True, torch.float32))
    torch.library.opcheck(torch.ops.hydra_ssm.gated_rms_norm_fwd.default, (x, z, weight, 1e-5))
    x, weight = leaves(*conv_inputs(2, 4, 3, 3, False, torch.float32))
    torch.library.opcheck(torch.ops.hydra_ssm.depthwise_conv_silu_fwd.default, (x, weight, None))


def test_torch_compile_forward_and_backward():
    """Compiled whole (fullgraph) with the kernels as opaque ops: the same values and gradients as eager."""
    x, z, weight = norm_inputs((2, 3, 5), True, torch.float32)
    xc, wc, bc = conv_inputs(2, 4, 3, 3, True, torch.float32)

    def both(x, z, weight, xc, wc, bc):
        return gated_rms_norm_triton(x, z, weight, 1e-5).sum() + depthwise_conv_silu_triton(xc, wc, bc).square().sum()

    eager_in, compiled_in = leaves(x, z, weight, xc, wc, bc), leaves(x, z, weight, xc, wc, bc)
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    compiled = torch.compile(both, backend=backend, fullgraph=True)
    out, ref = compiled(*compiled_in), both(*eager_in)
    close_scaled(out.detach(), ref.detach(), TOL[torch.float32])
    for a, b in zip(torch.autograd.grad(out, compiled_in), torch.autograd.grad(ref, eager_in)):
        close_scaled(a, b, TOL[torch.float32])
