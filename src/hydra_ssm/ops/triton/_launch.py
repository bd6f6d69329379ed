"""What the Triton kernels of Hydra's norm and conv share: the device check and the launch sizes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """Compiled Triton kernels run on CUDA tensors only; the interpreter (``TRITON_INTERPRET=1`` set before
    the kernels are first imported) runs them on CPU tensors."""
    if not t.is_cuda and not interpreting():
        raise ValueError(f"{name} must be a CUDA tensor for the Triton kernels, got one on {t.device} (set "
                         "TRITON_INTERPRET=1 before the kernels are first imported to run them on CPU tensors)")


_TL_DTYPES = {torch.float64: tl.float64, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
              torch.float16: tl.float16}


def tl_dtype(dtype: torch.dtype):
    """Triton's dtype for a torch floating dtype."""
    return _TL_DTYPES[dtype]


def tl_compute_dtype(dtype: torch.dtype):
    """The kernels' compute dtype for a torch compute dtype (float64 or float32)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_size(n: int, cap: int) -> int:
    """Power-of-two tile width covering ``n`` (at least 16, at most ``cap``)."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def partial_programs(rows: int, device: torch.device) -> int:
    """About how many programs share ``rows`` rows when each writes one partial sum of a parameter's
    gradient: a few per multiprocessor on CUDA, two in the interpreter (so tests cover several programs)."""
    if device.type == "cuda":
        return min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(rows, 2)
