"""Packed batches in the transformers models: what DataCollatorWithFlattening emits equals each example alone."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import DataCollatorWithFlattening, DataCollatorWithPadding  # noqa: E402

from hydra_ssm.models import (  # noqa: E402
    HydraConfig,
    HydraForMaskedLM,
    HydraForSequenceClassification,
    HydraForTokenClassification,
    HydraModel,
)

LENGTHS = (5, 1, 9, 4)  # a sequence of one token, boundaries inside and on the edge of chunks of 4
VOCAB = 40


def config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, d_state=4, headdim=8, expand=2, chunk_size=4,
                d_conv=3, intermediate_size=24, type_vocab_size=0, max_position_embeddings=32, num_labels=3,
                num_attention_heads=2)
    return HydraConfig(**{**base, **kw})


def make(cls, **kw):
    torch.manual_seed(0)
    return cls(config(**kw)).double().eval()


def examples(token_labels: bool, seed=0):
    """Examples of LENGTHS tokens; per-token labels with -100 on the first token (the [CLS] position, whose
    label DataCollatorWithFlattening replaces by -100 anyway) and on every third token."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(5, VOCAB, (n,), generator=gen).tolist()
        if token_labels:
            labels = [-100 if i == 0 or i % 3 == 2 else int(t) % 3 for i, t in enumerate(ids)]
            out.append({"input_ids": ids, "labels": labels})
        else:
            out.append({"input_ids": ids})
    return out


COLLATORS = {
    "position_ids": DataCollatorWithFlattening(),
    "flash_kwargs": DataCollatorWithFlattening(return_flash_attn_kwargs=True),
    "seq_idx": DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True),
}
MODELS = [
    pytest.param(dict(), id="hydra"),
    pytest.param(dict(is_prenorm=False, learnable_init_states=True), id="hydra-postnorm-init-states"),
    pytest.param(dict(use_position_embeddings=True), id="hydra-positions"),
    pytest.param(dict(matrix_mixer_type="mha", use_position_embeddings=True), id="mha-positions"),
    pytest.param(dict(matrix_mixer_type="toeplitz"), id="toeplitz"),
]


def padded(feats):
    """The same examples as one right-padded batch (transformers' DataCollatorWithPadding, labels padded
    with -100 by hand: that collator pads model inputs only)."""
    longest = max(len(f["input_ids"]) for f in feats)
    batch = DataCollatorWithPadding(tokenizer=_PadOnly())([{"input_ids": f["input_ids"]} for f in feats])
    if "labels" in feats[0]:
        batch["labels"] = torch.tensor([f["labels"] + [-100] * (longest - len(f["labels"])) for f in feats])
    return batch


class _PadOnly:
    """The least a tokenizer must offer DataCollatorWithPadding: right padding with id 0."""

    padding_side = "right"
    pad_token_id = 0
    model_input_names = ["input_ids", "attention_mask"]

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        longest = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features]
        return transformers.BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})


@pytest.mark.parametrize("kw", MODELS)
@pytest.mark.parametrize("collator", list(COLLATORS))
@pytest.mark.parametrize("cls", [HydraForMaskedLM, HydraForTokenClassification])
def test_flattened_batch_equals_each_example_alone(cls, collator, kw):
    model = make(cls, **kw)
    feats = examples(token_labels=True)
    if cls is HydraForMaskedLM:  # token ids as targets
        for f in feats:
            f["labels"] = [t if lab != -100 else -100 for t, lab in zip(f["input_ids"], f["labels"])]
    batch = COLLATORS[collator](feats)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    out = model(**batch)
    alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits for f in feats]
    torch.testing.assert_close(out.logits, torch.cat(alone, dim=1), rtol=1e-10, atol=1e-10)
    # the loss: the mean over the labelled tokens of all examples, as for the padded batch
    torch.testing.assert_close(out.loss, model(**padded(feats)).loss, rtol=1e-10, atol=1e-10)
    whole = model(input_ids=batch["input_ids"]).logits  # the row read as one sequence: the test can fail
    assert not torch.allclose(whole, out.logits, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("kw", MODELS[:3])
def test_sequence_classification_pools_each_packed_sequence(kw, pooling):
    """A packed row classifies each of its sequences: logits (n, num_labels) equal each example's alone."""
    model = make(HydraForSequenceClassification, pooling=pooling, **kw)
    feats = examples(token_labels=False)
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(feats)
    del batch["labels"]  # the collator's per-token labels; a sequence classifier takes one label per sequence
    labels = torch.tensor([0, 2, 1, 1])
    out = model(**batch, labels=labels)
    alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits for f in feats])
    torch.testing.assert_close(out.logits, alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.loss, model(**padded(feats), labels=labels).loss, rtol=1e-10, atol=1e-10)
    base = make(HydraModel, pooling=pooling, **kw)
    assert base(**batch).pooler_output.shape == (len(LENGTHS), 16)


def test_gradients_of_a_packed_batch_equal_the_padded_ones():
    model = make(HydraForTokenClassification, learnable_init_states=True)  # eval: no dropout
    feats = examples(token_labels=True)
    grads = []
    for batch in (DataCollatorWithFlattening()(feats), padded(feats)):
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")


def test_position_ids_that_never_restart_are_ordinary_positions():
    model = make(HydraModel, use_position_embeddings=True)
    ids = torch.randint(5, VOCAB, (1, 9))
    torch.testing.assert_close(model(ids, position_ids=torch.arange(9)[None]).last_hidden_state,
                               model(ids).last_hidden_state, rtol=0, atol=0)


def bad(**kw):
    ids = torch.randint(5, VOCAB, (1, 10))
    return dict(input_ids=ids, **kw)


BAD = [
    pytest.param(dict(position_ids=torch.tensor([[0, 1, 2, 0, 1, 3, 4, 5, 6, 7]])), "count 0, 1, 2", id="pos-gap"),
    pytest.param(dict(position_ids=torch.tensor([[1, 2, 3, 0, 1, 2, 3, 4, 5, 6]])), "count 0, 1, 2", id="pos-start"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0, 4, 9], dtype=torch.int32)), "cu_seq_lens_q: cu_seqlens must end",
                 id="cu-end"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0, 4, 4, 10], dtype=torch.int32)), "at least one token",
                 id="cu-empty"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
                      position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]])), "describe different",
                 id="cu-vs-pos"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32), max_length_q=5),
                 "max_length_q is 5 but the longest packed sequence has 6", id="max-length"),
    pytest.param(dict(seq_idx=torch.tensor([[0, 0, 2, 2, 2, 2, 2, 2, 2, 2]], dtype=torch.int32)),
                 "seq_idx must number", id="seq-idx-jump"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
                      attention_mask=torch.tensor([[1] * 9 + [0]])), "packed row has no padding", id="mask"),
    pytest.param(dict(cu_seq_lens_q=torch.tensor([0.0, 10.0])), "cu_seq_lens_q: cu_seqlens must be an integer",
                 id="cu-float"),
]


@pytest.mark.parametrize("kw, message", BAD)
def test_bad_packing_arguments_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        make(HydraModel)(**bad(**kw))


def test_packed_batch_must_be_one_row():
    with pytest.raises(ValueError, match="cu_seq_lens_q: .*one packed row"):
        make(HydraModel)(torch.randint(5, VOCAB, (2, 5)), cu_seq_lens_q=torch.tensor([0, 2, 5], dtype=torch.int32))


def test_left_padded_single_row_with_position_ids_stays_padded():
    """position_ids from a padding mask (zeros repeated on the left padding) are positions, not starts."""
    model = make(HydraModel, use_position_embeddings=True)
    ids = torch.randint(5, VOCAB, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, position_ids=pos).last_hidden_state
    torch.testing.assert_close(out[:, 2:], model(ids[:, 2:]).last_hidden_state, rtol=1e-10, atol=1e-10)


def test_trainer_runs_on_flattened_batches(tmp_path):
    pytest.importorskip("accelerate")
    datasets = pytest.importorskip("datasets")
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = HydraForTokenClassification(config())
    feats = examples(token_labels=True) * 2
    train = datasets.Dataset.from_list(feats)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    out = trainer.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    assert not torch.equal(model.classifier.weight.detach(), before)


def test_gradient_checkpointing_passes_the_offsets_to_every_block():
    model = make(HydraForMaskedLM)
    feats = examples(token_labels=True)
    batch = DataCollatorWithFlattening()(feats)
    model.train()  # checkpointing recomputes in training mode only; no dropout in the way:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain = model(**batch).logits
    model.gradient_checkpointing_enable()
    again = model(**batch)
    again.logits.sum().backward()
    torch.testing.assert_close(again.logits, plain, rtol=1e-12, atol=1e-12)
    alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits for f in feats], dim=1)
    torch.testing.assert_close(again.logits, alone, rtol=1e-10, atol=1e-10)
