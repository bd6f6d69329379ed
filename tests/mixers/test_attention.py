"""The multi-head attention baseline: padding and materialize."""

import torch

from hydra_ssm import MultiHeadAttention


def test_padding_does_not_leak_and_materialize_matches():
    torch.manual_seed(0)
    m = MultiHeadAttention(16, num_heads=4).double()
    u = torch.randn(1, 7, 16, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, 16, dtype=torch.float64), u, torch.randn(1, 2, 16, dtype=torch.float64)], 1)
    mask = torch.tensor([[0] * 3 + [1] * 7 + [0] * 2]).bool()
    out = m(padded, attention_mask=mask)
    torch.testing.assert_close(out[:, 3:10], m(u))
    assert (out[:, :3] == 0).all() and (out[:, 10:] == 0).all()
    # materialize: softmax weights over valid keys only, rows sum to one
    M = m.materialize(padded, attention_mask=mask)
    assert M.shape == (1, 4, 12, 12)
    assert (M[..., :3] == 0).all() and (M[..., 10:] == 0).all()
    torch.testing.assert_close(M.sum(-1), torch.ones(1, 4, 12, dtype=torch.float64))
    v = m._qkv(padded)[2]
    y = torch.einsum("bhij,bhjd->bihd", M, v).reshape(1, 12, 16)
    torch.testing.assert_close(m.out_proj(y)[:, 3:10], out[:, 3:10])


def test_fully_padded_row_stays_finite():
    m = MultiHeadAttention(8, num_heads=2)
    u = torch.randn(2, 5, 8)
    mask = torch.tensor([[1] * 5, [0] * 5]).bool()
    out = m(u, attention_mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
