"""HydraForMaskedLM / HydraForTokenClassification over sequences split across 2 and 4 gloo processes: the
logits, the loss (the ranks' shares summed) and every parameter's gradient (summed over the ranks) equal
one process's; position embeddings count from each shard's place; refusals are the same on every rank."""

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("transformers")

from hydra_ssm.bench.context_parallel import launch_gloo  # noqa: E402
from hydra_ssm.models import HydraConfig, HydraForMaskedLM, HydraForTokenClassification, HydraModel  # noqa: E402


LEARNED = {"learnable_init_states": True}


def config(**kw):
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, matrix_mixer_type="hydra", d_state=4, d_conv=3,
                headdim=8, chunk_size=4, intermediate_size=24, use_position_embeddings=True,
                max_position_embeddings=24, hidden_dropout_prob=0.0, type_vocab_size=0, num_labels=3)
    return HydraConfig(**{**base, **kw})


def compare(group, cases):
    rank = dist.get_rank(group)
    for cls, lengths, kw in cases:
        torch.manual_seed(0)
        kw = dict(kw)
        checkpointing = kw.pop("checkpointing", False)
        model = cls(config(**kw)).double()
        if checkpointing:  # each block recomputed in backward: its exchanges run again there, on every rank
            model.gradient_checkpointing_enable()
        for name, p in model.named_parameters():
            if name.endswith("init_states"):  # learned initial states, away from their zero init
                torch.nn.init.normal_(p)
        total = sum(lengths)
        gen = torch.Generator().manual_seed(2)
        ids = torch.randint(5, 40, (2, total), generator=gen)
        labels = torch.randint(0, 3 if cls is HydraForTokenClassification else 40, (2, total), generator=gen)
        labels[torch.rand(2, total, generator=gen) < 0.5] = -100
        labels[:, :lengths[0]] = -100  # the first shard has nothing to predict
        want = model(ids, labels=labels)
        want.loss.backward()
        want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()

        start = sum(lengths[:rank])
        stop = start + lengths[rank]
        got = model(ids[:, start:stop], labels=labels[:, start:stop], context_parallel_group=group)
        got.loss.backward()
        case = f"{cls.__name__} {lengths} {kw}"
        tol = dict(rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(got.logits, want.logits[:, start:stop], **tol, msg=lambda m: f"{case}: logits: {m}")
        loss = got.loss.detach().clone()
        dist.all_reduce(loss, group=group)  # the shares sum to the loss of the whole sequences
        torch.testing.assert_close(loss, want.loss.detach(), **tol)
        for name, p in model.named_parameters():
            g = p.grad.clone()
            dist.all_reduce(g, group=group)
            torch.testing.assert_close(g, want_grads[name], **tol, msg=lambda m: f"{case}: {name}.grad: {m}")


@pytest.mark.parametrize("world, cases", [
    (2, [(HydraForMaskedLM, [7, 9], {}), (HydraForMaskedLM, [8, 8], dict(is_prenorm=False, mixer_options=LEARNED)),
         (HydraForTokenClassification, [5, 11], dict(use_position_embeddings=False))]),
    (4, [(HydraForMaskedLM, [4, 6, 3, 7], dict(mixer_options=LEARNED)),
         (HydraForMaskedLM, [5, 5, 5, 5], dict(checkpointing=True))]),
])
def test_context_parallel_model_equals_one_process(world, cases):
    launch_gloo(compare, world, cases, start_method="fork")


def refusals(group):
    rank = dist.get_rank(group)
    out = []

    def attempt(fn):
        try:
            fn()
            out.append("no error")
        except ValueError as err:
            out.append(str(err))

    ids = torch.randint(5, 40, (1, 6))
    mlm = HydraForMaskedLM(config())
    attempt(lambda: HydraForMaskedLM(config(matrix_mixer_type="mha", num_attention_heads=2))(
        ids, context_parallel_group=group))
    attempt(lambda: HydraModel(config())(ids, context_parallel_group=group))  # with a pooler
    mask = torch.ones(1, 6, dtype=torch.long)
    if rank == 1:
        mask[0, -2:] = 0
    attempt(lambda: mlm(ids, attention_mask=mask, context_parallel_group=group))  # padding on rank 1 only
    attempt(lambda: mlm(torch.randint(5, 40, (1, 13)), context_parallel_group=group))  # 26 > 24 positions
    attempt(lambda: mlm(ids, attention_mask=torch.ones(1, 6), context_parallel_group=group))  # all ones: fine
    return out


def test_context_parallel_refusals_name_the_cause():
    mixer, pooler, padding, positions, ones = launch_gloo(refusals, 2, start_method="fork")
    assert "mixer 'mha' (MultiHeadAttention) cannot run context-parallel" in mixer
    assert "add_pooling_layer=False" in pooler
    assert "padding on rank(s) [1]" in padding
    assert "26 positions" in positions and "max_position_embeddings=24" in positions
    assert ones == "no error"
