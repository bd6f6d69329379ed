"""Hydra's Triton kernels (``backend="triton"``) against the float64 reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1,
set here before the kernels are first imported); with one, on CUDA tensors. The
interpreter is slow, so the shapes are tiny and the hypothesis runs short; the strategy
is ``test_ops.shapes``: L 0, 1, primes and non-multiples of the chunk, batch 0, chunks
1 to 64 (the kernels round them to a power of two in [16, 64]), dt exactly 0 / 1e-30 /
1e-300 at some or all positions, huge and zero decays, 1 or 2 groups.
"""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402

from hydra_ssm import Hydra  # noqa: E402
from hydra_ssm.ops import quasiseparable_chunked, quasiseparable_ref  # noqa: E402
from hydra_ssm.ops.quasiseparable import resolve_backend  # noqa: E402
from hydra_ssm.ops.triton.scan import block_chunk  # noqa: E402

from test_ops import DIAGS, STATES, assert_gradients_close, close_scaled, gradient_case, gradients, shapes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHORT = settings(max_examples=8 if DEVICE == "cpu" else 16, deadline=None)


def on_device(t, dtype=None):
    """A leaf copy of t (a tensor, a pair of tensors or None) on DEVICE, optionally converted."""
    if isinstance(t, tuple):
        return tuple(on_device(u, dtype) for u in t)
    if t is None:
        return None
    return t.detach().to(DEVICE, dtype or t.dtype).requires_grad_()


def leaves(args, init):
    return [t for t in (*args, *(init if isinstance(init, tuple) else (init,))) if t is not None]


def triton_scan(args, chunk, init):
    return quasiseparable_chunked(*args, chunk_size=chunk, initial_states=init, backend="triton")


@SHORT
@given(shapes(), DIAGS, STATES)
def test_triton_equals_reference_float64(s, diag, states):
    """Outputs and the gradients of every input, at the strategy's edges, to 1e-8 of the largest entry."""
    c = gradient_case(s, diag, states)
    args, init = [on_device(t) for t in c.args], on_device(c.init)
    y = triton_scan(args, s["q"], init)
    y_ref = quasiseparable_ref(*c.args, initial_states=c.init)
    close_scaled(y.detach().cpu(), y_ref.detach(), 1e-9)
    fast = gradients((y,), (c.weight[0].to(DEVICE),), leaves(args, init))
    ref = gradients((y_ref,), c.weight, c.leaves)
    assert_gradients_close([g.cpu() for g in fast], ref, c.names, "triton")


# (B, L, H, P, G, N): L of 1, a prime, a non-multiple of the chunk spanning chunks; P, N not powers of two
LOW_PRECISION_SHAPES = [(1, 1, 2, 16, 1, 16), (2, 37, 4, 8, 2, 12), (1, 70, 2, 16, 1, 16)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-4), (torch.float16, 3e-2),
                                        pytest.param(torch.bfloat16, 6e-2, marks=pytest.mark.skipif(
                                            DEVICE == "cpu", reason="the interpreter gets bfloat16 tl.dot wrong"))])
@pytest.mark.parametrize("shape", LOW_PRECISION_SHAPES)
def test_triton_low_precision(dtype, tol, shape):
    """float32 (exact products) and float16 / bfloat16 (tensor-core operands, float32 accumulation) against the
    float64 reference of the same rounded inputs, with dt = 0 at some positions and both initial states."""
    s = dict(b=shape[0], l=shape[1], h=shape[2], p=shape[3], g=shape[4], n=shape[5], q=32, seed=3,
             dt_scales=(0.3, 0.3), A="moderate", edge=0.0, edge_fraction=0.3)
    c = gradient_case(s, "token", "pair")
    rounded = [None if t is None else t.detach().to(dtype) for t in c.args]
    rounded[1:4] = [t.float() for t in rounded[1:4]]  # dt and A stay float32, as the Hydra layer passes them
    init_rounded = tuple(t.detach().float() for t in c.init)
    args, init = [on_device(t) for t in rounded], on_device(init_rounded)
    y = triton_scan(args, 64, init)
    assert y.dtype == dtype
    ref_args = [t.double().requires_grad_() for t in rounded]
    ref_init = tuple(t.double().requires_grad_() for t in init_rounded)
    y_ref = quasiseparable_ref(*ref_args, initial_states=ref_init)
    close_scaled(y.detach().double().cpu(), y_ref.detach(), tol)
    weight = c.weight[0]
    fast = gradients((y.float(),), (weight.float().to(DEVICE),), leaves(args, init))
    ref = gradients((y_ref,), (weight,), leaves(ref_args, ref_init))
    for name, g_fast, g_ref, leaf in zip(c.names, fast, ref, leaves(args, init), strict=True):
        assert g_fast.dtype == leaf.dtype, name
        try:
            close_scaled(g_fast.detach().double().cpu(), g_ref, tol)
        except AssertionError as err:
            raise AssertionError(f"{dtype}: gradient of {name}: {err}") from None


def test_triton_gradient_of_dt_is_right_where_dt_is_zero():
    """d y / d dt at a position with dt = 0 is not 0: dt is a factor of the block, not inside an exponent."""
    s = dict(b=1, l=20, h=2, p=3, g=1, n=4, q=16, seed=5, dt_scales=(0.5, 0.5), A="moderate", edge=0.0,
             edge_fraction=0.5)
    c = gradient_case(s, "none", "none")
    args = [on_device(t) for t in c.args]
    ref = gradients((quasiseparable_ref(*c.args),), c.weight, c.leaves)
    fast = gradients((triton_scan(args, 16, None),), (c.weight[0].to(DEVICE),), leaves(args, None))
    zero = c.args[1].detach() == 0
    assert (ref[1][zero] != 0).sum() >= 5  # (the forward dt of the last position reaches no output)
    close_scaled(fast[1].cpu(), ref[1], 1e-9)


@pytest.mark.parametrize("chunk", [1, 16, 17, 32, 64, 256])
def test_triton_output_does_not_depend_on_chunk(chunk):
    s = dict(b=1, l=45, h=2, p=4, g=2, n=5, q=chunk, seed=7, dt_scales=(1.0, 1e-3), A="large", edge=1e-30,
             edge_fraction=0.3)
    c = gradient_case(s, "head", "shared")
    y = triton_scan([on_device(t) for t in c.args], chunk, on_device(c.init))
    close_scaled(y.detach().cpu(), quasiseparable_ref(*c.args, initial_states=c.init).detach(), 1e-9)
    assert block_chunk(chunk) in (16, 32, 64)


def test_hydra_layer_triton_equals_torch():
    """The layer with scan_impl="triton" against "fused" (the torch scan): same output and parameter gradients."""
    torch.manual_seed(0)
    kw = dict(d_model=16, d_state=8, headdim=4, ngroups=2, learnable_init_states=True, dtype=torch.float64,
              device=DEVICE)
    fused, triton_layer = Hydra(scan_impl="fused", **kw), Hydra(scan_impl="triton", **kw)
    triton_layer.load_state_dict(fused.state_dict())
    with torch.no_grad():
        fused.init_states.normal_()
        triton_layer.init_states.copy_(fused.init_states)
    u = torch.randn(2, 19, 16, dtype=torch.float64, device=DEVICE)
    mask = torch.ones(2, 19, dtype=torch.bool, device=DEVICE)
    mask[1, :4] = False  # left padding
    y_fused, y_triton = fused(u, attention_mask=mask), triton_layer(u, attention_mask=mask)
    close_scaled(y_triton.detach(), y_fused.detach(), 1e-10)
    y_fused.square().sum().backward()
    y_triton.square().sum().backward()
    for (name, p_fused), p_triton in zip(fused.named_parameters(), triton_layer.parameters()):
        try:
            close_scaled(p_triton.grad, p_fused.grad, 1e-9)
        except AssertionError as err:
            raise AssertionError(f"gradient of {name}: {err}") from None


def test_torch_compile_traces_the_custom_ops():
    """Under torch.compile (fullgraph) the kernels are opaque custom ops with fake kernels: same outputs and
    gradients as eager. CPU: the aot_eager backend (no C++ compiler needed); GPU: inductor."""
    s = dict(b=2, l=21, h=2, p=4, g=1, n=4, q=16, seed=9, dt_scales=(0.5, 0.5), A="moderate", edge=0.0,
             edge_fraction=0.2)
    c = gradient_case(s, "token", "pair")
    args, init = [on_device(t) for t in c.args], on_device(c.init)

    def run(*a):
        return quasiseparable_chunked(*a[:9], chunk_size=16, initial_states=(a[9], a[10]), backend="triton")

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    weight = c.weight[0].to(DEVICE)
    eager = gradients((run(*args, *init),), (weight,), leaves(args, init))
    traced = gradients((compiled(*args, *init),), (weight,), leaves(args, init))
    for name, a, b in zip(c.names, traced, eager, strict=True):
        close_scaled(a, b, 1e-12)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake kernel against the real one, autograd registration."""
    from hydra_ssm.ops.triton.scan import _log_decays

    s = dict(b=1, l=18, h=2, p=4, g=1, n=4, q=16, seed=11, dt_scales=(0.5, 0.5), A="moderate", edge=0.0,
             edge_fraction=0.0)
    x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D = [on_device(t) for t in gradient_case(s, "token", "none").args]
    decays, totals = _log_decays(dt_f, dt_b, A, 16, torch.float64)
    torch.library.opcheck(torch.ops.hydra_ssm.scan_fwd.default,
                          (x, dt_f, dt_b, B_f, C_f, B_b, C_b, decays.detach().requires_grad_(),
                           totals.detach().requires_grad_(), D, None, 16),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---------------------------------------------------------------- choosing the backend, and its errors
def test_backend_choice():
    x = torch.zeros(1, 2, 1, 1)
    assert resolve_backend("auto", x) == "torch"  # CPU tensors: the torch scan
    assert resolve_backend("torch", x) == "torch"
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'triton', got 'cuda'"):
        resolve_backend("cuda", x)
    wide = torch.zeros(1, 2, 1, 256)
    assert resolve_backend("auto", wide) == "torch"
    with pytest.raises(ValueError, match="headdim and d_state up to 128, got headdim 256 and d_state 4"):
        resolve_backend("triton", wide, dstate=4)
    with pytest.raises(ValueError, match="does not take packed batches"):
        resolve_backend("triton", x, cu_seqlens=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="scan_impl must be one of"):
        Hydra(16, headdim=4, scan_impl="cuda")


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors without the interpreter")
def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    code = ("import torch; from hydra_ssm.ops import quasiseparable_chunked\n"
            "from helpers import hydra_inputs\n"
            "try:\n"
            "    quasiseparable_chunked(*hydra_inputs(1, 3, 1, 1, 1, 1), backend='triton')\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "backend='triton' runs CUDA tensors (x is on cpu); set TRITON_INTERPRET=1" in out.stdout, out.stderr
