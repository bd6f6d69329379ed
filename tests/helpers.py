"""Random inputs for the operator tests."""

import torch


def ssm_inputs(b, l, h, p, g, n, *, dtype=torch.float64, seed=0, dt_scale=1.0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    x = rnd(b, l, h, p)
    dt = torch.rand(b, l, h, generator=gen, dtype=dtype) * dt_scale + 0.01
    A = -(torch.rand(h, generator=gen, dtype=dtype) + 0.1)
    B, C = rnd(b, l, g, n), rnd(b, l, g, n)
    out = [x, dt, A, B, C]
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return out


def hydra_inputs(b, l, h, p, g, n, *, dtype=torch.float64, seed=0, dt_scale=1.0, diag="token", requires_grad=False):
    x, dt_f, A, B_f, C_f = ssm_inputs(b, l, h, p, g, n, dtype=dtype, seed=seed, dt_scale=dt_scale)
    _, dt_b, _, B_b, C_b = ssm_inputs(b, l, h, p, g, n, dtype=dtype, seed=seed + 1, dt_scale=dt_scale)
    gen = torch.Generator().manual_seed(seed + 2)
    D = {"none": None, "head": torch.randn(h, generator=gen, dtype=dtype),
         "token": torch.randn(b, l, h, generator=gen, dtype=dtype)}[diag]
    out = [x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D]
    if requires_grad:
        out = [None if t is None else t.requires_grad_() for t in out]
    return out
