"""Toeplitz mixing: ``y_i = sum_j k[i - j] x_j`` by FFT in O(L log L).

The kernel is stored by lag: ``kernel[..., d + L - 1]`` is the coefficient of
lag ``d = i - j`` for ``d`` in ``[-(L-1), L-1]`` (length ``2L - 1``).

Layout: x (B, L, H, P); kernel (B, H, 2L-1) or (H, 2L-1) (shared by the batch).
"""

from __future__ import annotations

import torch

from ._shapes import check_tensor, compute_dtype


def _check(x: torch.Tensor, kernel: torch.Tensor) -> None:
    check_tensor(x, "x")
    check_tensor(kernel, "kernel", x.device)
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, seqlen, nheads, headdim), got shape {tuple(x.shape)}")
    b, l, h, _ = x.shape
    lags = max(2 * l - 1, 0)
    if kernel.dim() not in (2, 3) or kernel.shape[-2:] != (h, lags):
        raise ValueError(f"kernel must be (nheads, 2L-1) or (batch, nheads, 2L-1) = (.., {h}, {lags}), "
                         f"got {tuple(kernel.shape)}")
    if kernel.dim() == 3 and kernel.shape[0] not in (1, b):
        raise ValueError(f"kernel batch dimension {kernel.shape[0]} does not match x's batch {b}")


def toeplitz_matrix(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """The explicit (B, H, L, L) (or (H, L, L)) matrix ``T[i, j] = kernel[i - j + L - 1]``."""
    i = torch.arange(length, device=kernel.device)
    idx = i[:, None] - i[None, :] + length - 1
    return kernel[..., idx]


def toeplitz_ref(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reference: explicit matrix, float64."""
    _check(x, kernel)
    T = toeplitz_matrix(kernel.double(), x.shape[1])
    if T.dim() == 3:
        T = T[None]
    return torch.einsum("bhij,bjhp->bihp", T, x.double()).to(x.dtype)


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b >= n (fast sizes for pocketfft / cuFFT)."""
    best = 1 << max(0, (n - 1).bit_length())
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < n:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best


def toeplitz_fft(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Fast path: ``y_i = sum_j kernel[i - j + L - 1] x_j`` by real FFT, O(L log L) time, O(L) memory.

    Computed in float32 (float64 if x or the kernel is float64); returns x's dtype.
    """
    _check(x, kernel)
    if x.numel() == 0:  # batch, length, heads or head dim 0: the reference gives the empty output
        return toeplitz_ref(x, kernel)
    b, l, h, p = x.shape
    work = compute_dtype(x, kernel)
    n = _fft_size(2 * l - 1)  # circular size >= 2L - 1: no aliasing on the L outputs we keep
    xf = torch.fft.rfft(x.to(work).permute(0, 2, 3, 1), n=n)  # (B, H, P, n/2+1)
    kf = torch.fft.rfft(kernel.to(work), n=n)  # (.., H, n/2+1)
    kf = kf[None, :, None] if kernel.dim() == 2 else kf[:, :, None]
    y = torch.fft.irfft(xf * kf, n=n)[..., l - 1: 2 * l - 1]  # (B, H, P, L)
    return y.permute(0, 3, 1, 2).to(x.dtype)
