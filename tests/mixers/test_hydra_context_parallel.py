"""Hydra over a sequence split across 2 and 4 gloo processes equals the single-process layer: outputs and
gradients (of the input and of every parameter), even and uneven shards, learned initial states; the
exchanged volume does not depend on the sequence length; bad shards fail alike on every rank."""

import pytest
import torch
import torch.distributed as dist

from hydra_ssm.bench.context_parallel import launch_gloo
from hydra_ssm.mixers import Hydra
from hydra_ssm.mixers.context_parallel import ExchangeLog

# (lengths of the shards in rank order, d_conv, learned initial states, dtype, batch)
CASES_2 = [([9, 11], 7, True, torch.float64, 2), ([4, 4], 7, False, torch.float64, 1),
           ([10, 10], 7, True, torch.float32, 2), ([1, 5], 1, True, torch.float64, 1)]
CASES_4 = [([5, 5, 5, 5], 7, True, torch.float64, 2), ([6, 4, 9, 4], 7, True, torch.float64, 1),
           ([8, 8, 8, 8], 3, True, torch.float32, 2), ([1, 2, 1, 3], 1, False, torch.float64, 1)]


def make_layer(d_conv, learned, dtype):
    torch.manual_seed(0)
    m = Hydra(16, d_state=4, headdim=8, d_conv=d_conv, chunk_size=4, learnable_init_states=learned).to(dtype)
    if learned:
        torch.nn.init.normal_(m.init_states)
    return m


def check_against_one_process(group, cases):
    rank = dist.get_rank(group)
    for lengths, d_conv, learned, dtype, batch in cases:
        m = make_layer(d_conv, learned, dtype)
        gen = torch.Generator().manual_seed(1)
        total = sum(lengths)
        u = torch.randn(batch, total, 16, generator=gen, dtype=dtype, requires_grad=True)
        weight = torch.randn(batch, total, 16, generator=gen, dtype=dtype)
        want = m(u)
        (want * weight).sum().backward()
        want_grads = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()

        start = sum(lengths[:rank])
        stop = start + lengths[rank]
        shard = u.detach()[:, start:stop].clone().requires_grad_()
        got = m(shard, context_parallel_group=group)
        (got * weight[:, start:stop]).sum().backward()
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        case = f"case {lengths}, d_conv {d_conv}, {dtype}"
        torch.testing.assert_close(got, want[:, start:stop], **tol, msg=lambda m: f"{case}: output: {m}")
        torch.testing.assert_close(shard.grad, u.grad[:, start:stop], **tol, msg=lambda m: f"{case}: u.grad: {m}")
        for (name, p), w in zip(m.named_parameters(), want_grads):
            g = p.grad.clone()
            dist.all_reduce(g, group=group)  # every rank holds its share of the parameters' gradients
            torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{case}: {name}.grad: {m}")


@pytest.mark.parametrize("world, cases", [(2, CASES_2), (4, CASES_4)])
def test_context_parallel_equals_one_process(world, cases):
    launch_gloo(check_against_one_process, world, cases, start_method="fork")


def exchanged_bytes(group):
    """Per-layer exchanged bytes at two lengths; and the errors every rank raises for bad shards."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    m = make_layer(7, True, torch.float32)
    counts = []
    for per_rank in (5, 50):
        u = torch.randn(2, per_rank, 16, requires_grad=True)
        with ExchangeLog() as log:
            m(u, context_parallel_group=group).sum().backward()
        counts.append((log.forward_bytes, log.backward_bytes))
    errors = []
    for lengths, batch in (([4, 3], [1, 1]), ([5, 5], [1, 2])):  # a shard shorter than the halo; batch sizes differ
        try:
            m(torch.randn(batch[rank], lengths[rank], 16), context_parallel_group=group)
        except ValueError as err:
            errors.append(str(err))
    try:
        m(torch.randn(1, 5, 16), attention_mask=torch.ones(1, 5), context_parallel_group=group)
    except ValueError as err:
        errors.append(str(err))
    return {"counts": counts, "errors": errors, "world": world}


def test_exchange_is_independent_of_length_and_bad_shards_fail_on_every_rank():
    r = launch_gloo(exchanged_bytes, 2, start_method="fork")
    (fwd, bwd), again = r["counts"]
    assert again == (fwd, bwd)  # 10 times the length, the same exchange
    h, p, n, d_model, halo, batch, world = 4, 8, 4, 16, 4, 2, 2
    floats = world * batch * (2 * halo * d_model + 2 * h * p * n + 2 * h)
    assert fwd == 4 * floats + 8 * 3 * world  # float32 halos and summaries, and the (batch, length, padded) integers
    assert bwd == 4 * floats
    short, batches, masked = r["errors"]
    assert "at least 4 positions" in short and "[4, 3]" in short
    assert "batch sizes [1, 2]" in batches
    assert "attention_mask" in masked


def test_group_without_distributed_is_refused():
    m = make_layer(7, False, torch.float32)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        m(torch.randn(1, 5, 16), context_parallel_group=object())
