"""The training step with --context-parallel: 2 and 4 gloo processes (context parallel alone, and 2 groups of 2
that also split the batch) give the single-process loss and DDP-reduced gradients of the global batch."""

import copy
import os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("transformers")

from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from hydra_ssm.bench.context_parallel import launch_gloo  # noqa: E402
from hydra_ssm.train.batching import make_batch, step_generator  # noqa: E402
from hydra_ssm.train.config import TrainConfig  # noqa: E402
from hydra_ssm.train.loop import Dist, build_model, loss_terms, step_loss  # noqa: E402
from hydra_ssm.train.tasks import TaskData  # noqa: E402


def first_step(group, context_parallel, position_embeddings):
    rank, world = dist.get_rank(), dist.get_world_size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # as torchrun sets them
    cfg = TrainConfig(mixers=["hydra"], context_parallel=context_parallel, batch_size=4, seq_len=18, hidden_size=16,
                      num_layers=2, d_state=4, headdim=8, d_conv=3, chunk_size=4, intermediate_size=24,
                      position_embeddings=position_embeddings, threads=1, device="cpu").validate()
    ids = torch.randint(5, 60, (8, 18), generator=torch.Generator().manual_seed(0))
    task = TaskData("mlm", {"input_ids": ids}, {"input_ids": ids[:4]}, vocab_size=60, seq_len=18)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task, "hydra", cfg.intermediate_size)
    reference = copy.deepcopy(model)
    gbatch = make_batch(task, "train", [3, 0, 6, 1], mask_prob=0.3, gen=step_generator(cfg.seed, 0))

    total, count, _ = loss_terms(reference, gbatch, "mlm")  # one process, the whole global batch
    (total / count).backward()

    d = Dist(cfg)
    ddp = DDP(model)  # held until after backward: its hooks reduce the gradients
    loss = step_loss(ddp, gbatch, "mlm", d, nullcontext())
    loss.backward.backward()
    mean = float(d.sum(loss.total.detach().double())) / loss.count
    assert loss.count == count
    assert abs(mean - float(total) / count) <= 1e-6 * abs(mean), (mean, float(total) / count)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}.grad: {m}")
    return {"data_parallel": d.data_parallel, "shard": tuple(d.local(gbatch)["input_ids"].shape)}


@pytest.mark.parametrize("world, context_parallel, position_embeddings, shard", [
    (2, 2, "on", (4, 9)), (4, 2, "off", (2, 9)), (4, 4, "on", (4, 5))])
def test_first_step_equals_one_process(world, context_parallel, position_embeddings, shard):
    r = launch_gloo(first_step, world, context_parallel, position_embeddings, start_method="fork")
    assert r == {"data_parallel": world // context_parallel, "shard": shard}
