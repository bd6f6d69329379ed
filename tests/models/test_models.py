"""Hydra encoders as transformers models: heads, Auto classes, padding, pipelines, converter, config errors."""

from __future__ import annotations

import argparse
import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.modeling_outputs import (  # noqa: E402
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from hydra_ssm.mixers import Hydra, SequenceMixer, available_mixers, register_mixer  # noqa: E402
from hydra_ssm.models import (  # noqa: E402
    HydraConfig,
    HydraForImageClassification,
    HydraForMaskedLM,
    HydraForSequenceClassification,
    HydraForTokenClassification,
    HydraModel,
    HydraVisionConfig,
    HydraVisionModel,
)
from hydra_ssm.models import convert_reference  # noqa: E402

VOCAB = 64


# ---------------------------------------------------------------------------- helpers
class _PositionalMixer(SequenceMixer):
    """A data-independent mixer for the tests: a learned L x L matrix, sized by max_seq_len,
    applied to valid tokens only (positions counted from the first valid token)."""

    def __init__(self, d_model, max_seq_len=None, is_data_dependent=True):
        super().__init__()
        if max_seq_len is None:
            raise ValueError("max_seq_len is required")
        self.weight = nn.Parameter(torch.randn(max_seq_len, max_seq_len) / max_seq_len)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, u, attention_mask=None):
        B, L, _ = u.shape
        if attention_mask is None:
            return torch.einsum("ij,bjd->bid", self.weight[:L, :L], self.proj(u))
        pos = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, L)
        w = self.weight[pos[:, :, None], pos[:, None, :]]  # (B, L, L)
        w = w * attention_mask[:, None, :] * attention_mask[:, :, None]
        return torch.einsum("bij,bjd->bid", w, self.proj(u))


@pytest.fixture(autouse=True, scope="module")
def _register_positional_mixer():
    """Register the test mixer for this module only, so other test modules never see it."""
    from hydra_ssm.mixers import registry

    added = "_test_positional" not in available_mixers()
    if added:
        register_mixer("_test_positional")(_PositionalMixer)
    yield
    if added:
        registry._MIXERS.pop("_test_positional", None)


def tiny_config(**overrides) -> HydraConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, headdim=16, d_state=8, chunk_size=8,
                  num_attention_heads=4, max_position_embeddings=32, hidden_dropout_prob=0.0, image_size=16,
                  patch_size=4, num_channels=3)
    values.update(overrides)
    return HydraConfig(**values)


def make_inputs(cls, config, batch=2, seqlen=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    if cls is HydraForImageClassification:
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g)}
    return {"input_ids": torch.randint(1, config.vocab_size, (batch, seqlen), generator=g)}


def make_labels(cls, config, inputs):
    batch = next(iter(inputs.values())).shape[0]
    if cls is HydraForMaskedLM:
        labels = inputs["input_ids"].clone()
        labels[:, ::2] = -100
        return labels
    if cls is HydraForTokenClassification:
        return torch.randint(0, config.num_labels, inputs["input_ids"].shape)
    return torch.randint(0, config.num_labels, (batch,))


HEADS = [HydraForMaskedLM, HydraForSequenceClassification, HydraForTokenClassification, HydraForImageClassification]
OUTPUT_TYPES = {HydraModel: BaseModelOutputWithPooling, HydraForMaskedLM: MaskedLMOutput,
                HydraForSequenceClassification: SequenceClassifierOutput,
                HydraForTokenClassification: TokenClassifierOutput,
                HydraForImageClassification: ImageClassifierOutput}


def tiny_tokenizer():
    """A WordPiece tokenizer trained on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog are friends",
                 "the mat is red", "the log is brown", "friends sit on mats and logs"]
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)


# ---------------------------------------------------------------------------- heads
@pytest.mark.parametrize("mixer", ["hydra", "mha", "_test_positional"])
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_head_forward_backward(cls, mixer):
    torch.manual_seed(0)
    config = tiny_config(matrix_mixer_type=mixer, num_labels=3, intermediate_size=48 if mixer == "mha" else 0)
    model = cls(config).train()
    inputs = make_inputs(cls, config)
    out = model(**inputs, labels=make_labels(cls, config, inputs), output_hidden_states=True)
    assert isinstance(out, OUTPUT_TYPES[cls])
    batch = next(iter(inputs.values())).shape[0]
    if cls is HydraForMaskedLM:
        assert out.logits.shape == (batch, 10, VOCAB)
    elif cls is HydraForTokenClassification:
        assert out.logits.shape == (batch, 10, 3)
    else:
        assert out.logits.shape == (batch, 3)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    seqlen = 10 if cls is not HydraForImageClassification else config.image_seq_len
    assert all(h.shape == (batch, seqlen, config.hidden_size) for h in out.hidden_states)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # the padding row of the embedding gets no gradient, everything else must
    assert no_grad == [], no_grad
    mixer_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if ".mixer." in n]
    assert mixer_grads and all(g > 0 for g in mixer_grads)
    # tuple outputs
    model.eval()
    tup = model(**inputs, return_dict=False)
    assert isinstance(tup, tuple) and torch.allclose(tup[0], model(**inputs).logits)


def test_hydra_model_outputs_and_pooling():
    torch.manual_seed(0)
    config = tiny_config()
    model = HydraModel(config).eval()
    ids = make_inputs(HydraModel, config)["input_ids"]
    out = model(ids, output_hidden_states=True)
    assert isinstance(out, BaseModelOutputWithPooling)
    assert out.last_hidden_state.shape == (2, 10, 32) and out.pooler_output.shape == (2, 32)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    expected = torch.tanh(model.pooler.dense(out.last_hidden_state[:, 0]))
    torch.testing.assert_close(out.pooler_output, expected)
    assert HydraModel(config, add_pooling_layer=False)(ids).pooler_output is None
    with pytest.raises(ValueError, match="exactly one"):
        model()


def test_sequence_classification_losses():
    """regression for one label, cross-entropy for integer labels, BCE for float multi-label targets."""
    torch.manual_seed(0)
    ids = make_inputs(HydraModel, tiny_config())["input_ids"]

    model = HydraForSequenceClassification(tiny_config(num_labels=1)).eval()
    y = torch.randn(2)
    out = model(ids, labels=y)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), y))

    model = HydraForSequenceClassification(tiny_config(num_labels=3)).eval()
    y = torch.tensor([2, 0])
    out = model(ids, labels=y)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))

    model = HydraForSequenceClassification(tiny_config(num_labels=3)).eval()
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = model(ids, labels=y)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, y))


def test_masked_lm_ties_embeddings_and_ignores_unlabelled_positions():
    torch.manual_seed(0)
    model = HydraForMaskedLM(tiny_config()).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = make_inputs(HydraForMaskedLM, model.config)["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[0, 3] = 7
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[0, 3][None], torch.tensor([7])))


# ---------------------------------------------------------------------------- Auto classes, save/load
def test_auto_classes_resolve():
    config = tiny_config()
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    assert type(AutoConfig.for_model("hydra", **values)) is HydraConfig
    assert type(AutoConfig.for_model("hydra_vision", **values)) is HydraVisionConfig
    for auto, cls in ((AutoModel, HydraModel), (AutoModelForMaskedLM, HydraForMaskedLM),
                      (AutoModelForSequenceClassification, HydraForSequenceClassification),
                      (AutoModelForTokenClassification, HydraForTokenClassification)):
        assert type(auto.from_config(config)) is cls
    vision = HydraVisionConfig(**values)
    for auto, cls in ((AutoModel, HydraVisionModel), (AutoModelForImageClassification, HydraForImageClassification)):
        assert type(auto.from_config(vision)) is cls


@pytest.mark.parametrize("cls, auto", [(HydraModel, AutoModel), (HydraForMaskedLM, AutoModelForMaskedLM),
                                       (HydraForSequenceClassification, AutoModelForSequenceClassification),
                                       (HydraForTokenClassification, AutoModelForTokenClassification),
                                       (HydraForImageClassification, AutoModelForImageClassification)],
                         ids=lambda c: getattr(c, "__name__", str(c)))
def test_save_load_roundtrip(tmp_path, cls, auto):
    torch.manual_seed(0)
    config = tiny_config(num_labels=3, is_prenorm=True, use_position_embeddings=True, pooling="mean")
    model = cls(config).eval()
    with torch.no_grad():  # make the non-default parameters differ from any init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    for field in ("is_prenorm", "use_position_embeddings", "pooling", "num_labels", "d_state", "headdim",
                  "matrix_mixer_type", "max_position_embeddings", "image_size", "patch_size"):
        assert getattr(loaded.config, field) == getattr(config, field), field
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    inputs = make_inputs(cls, config)
    a, b = model(**inputs)[0], loaded(**inputs)[0]
    assert torch.equal(a, b)
    if cls is HydraForMaskedLM:
        assert loaded.lm_head.decoder.weight is loaded.hydra.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------- padding
PAD_CASES = [
    dict(matrix_mixer_type="hydra"),
    dict(matrix_mixer_type="hydra", is_prenorm=True, use_position_embeddings=True, intermediate_size=40),
    dict(matrix_mixer_type="mha", use_position_embeddings=True, pooling="mean"),
    dict(matrix_mixer_type="_test_positional", intermediate_size=40),
]


@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("cls", [HydraForMaskedLM, HydraForSequenceClassification, HydraForTokenClassification],
                         ids=lambda c: c.__name__)
@torch.no_grad()
def test_padding_invariance(cls, case):
    """Logits at valid positions do not change with left or right padding of any amount."""
    torch.manual_seed(0)
    # large init so any leak from padded tokens shows clearly
    config = tiny_config(num_labels=3, initializer_range=0.3, **case)
    model = cls(config).eval()
    lengths = [9, 5, 7]
    pad = 4
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, VOCAB, (n,), generator=g) for n in lengths]
    ref = [model(s[None]).logits[0] for s in seqs]  # each sequence alone, no padding

    width = max(lengths) + pad
    for side in ("left", "right"):
        ids = torch.randint(1, VOCAB, (len(seqs), width), generator=g)  # junk in the padding
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        spans = []
        for b, s in enumerate(seqs):
            start = width - len(s) if side == "left" else 0
            ids[b, start:start + len(s)] = s
            mask[b, start:start + len(s)] = 1
            spans.append(slice(start, start + len(s)))
        masked = model(ids, attention_mask=mask).logits
        unmasked = model(ids).logits  # the same batch read as if the junk were tokens
        leak = 0.0
        for b, span in enumerate(spans):
            got = masked[b, span] if cls is not HydraForSequenceClassification else masked[b]
            torch.testing.assert_close(got, ref[b], atol=2e-5, rtol=1e-4)
            other = unmasked[b, span] if cls is not HydraForSequenceClassification else unmasked[b]
            leak = max(leak, float((other - ref[b]).abs().max()))
        assert leak > 1e-3, "the test is too weak: junk tokens do not change unmasked outputs"


def test_fully_valid_mask_equals_no_mask():
    torch.manual_seed(0)
    model = HydraForMaskedLM(tiny_config()).eval()
    ids = make_inputs(HydraForMaskedLM, model.config)["input_ids"]
    assert torch.equal(model(ids).logits, model(ids, attention_mask=torch.ones_like(ids)).logits)


# ---------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("cls", [HydraForMaskedLM, HydraForImageClassification], ids=lambda c: c.__name__)
def test_gradient_checkpointing_matches(cls):
    torch.manual_seed(0)
    config = tiny_config(num_labels=3, intermediate_size=40)
    model = cls(config).train()
    inputs = make_inputs(cls, config)
    labels = make_labels(cls, config, inputs)
    model(**inputs, labels=labels).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it; the old name must still work
        model.gradient_checkpointing_enable()
    assert model.hydra.encoder.gradient_checkpointing
    calls = []
    original = model.hydra.encoder._gradient_checkpointing_func
    model.hydra.encoder._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or original(*a, **k)
    model(**inputs, labels=labels).loss.backward()
    assert len(calls) == config.num_hidden_layers
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-5, msg=n)


# ---------------------------------------------------------------------------- pipelines
def test_fill_mask_pipeline(tmp_path):
    from transformers import pipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = HydraForMaskedLM(tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    fill = pipeline("fill-mask", model=str(tmp_path), top_k=3, device="cpu")
    assert isinstance(fill.model, HydraForMaskedLM)
    text = "the cat [MASK] on the mat"
    result = fill(text)
    assert len(result) == 3 and all({"score", "token", "token_str", "sequence"} <= set(r) for r in result)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    # the scores are the softmax of the model's logits at the masked position
    enc = tokenizer(text, return_tensors="pt")
    pos = int((enc["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    probs = model(**enc).logits[0, pos].softmax(-1)
    top = probs.topk(3)
    assert [r["token"] for r in result] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(scores), top.values.detach(), atol=1e-5, rtol=1e-4)

    batch = fill(["the dog [MASK] on the log", "a [MASK] and a dog"])
    assert len(batch) == 2 and all(len(r) == 3 for r in batch)


def test_text_classification_pipeline():
    from transformers import pipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    config = tiny_config(vocab_size=len(tokenizer), num_labels=3, id2label=labels,
                         label2id={v: k for k, v in labels.items()}, initializer_range=0.3)
    model = HydraForSequenceClassification(config).eval()
    clf = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = ["the cat sat on the mat", "friends sit on logs", "a dog"]
    out = clf(texts)
    assert len(out) == 3 and all(o["label"] in labels.values() for o in out)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    logits = model(**enc).logits
    assert [o["label"] for o in out] == [labels[i] for i in logits.argmax(-1).tolist()]
    full = clf(texts[0], top_k=None)
    assert len(full) == 3 and abs(sum(o["score"] for o in full) - 1) < 1e-5


# ---------------------------------------------------------------------------- every registered mixer
@pytest.mark.parametrize("name", sorted(available_mixers()))
def test_every_registered_mixer_builds_and_runs(name):
    """Any name in the registry (including mixers added later) gives a working model that honours padding."""
    torch.manual_seed(0)
    try:
        config = tiny_config(matrix_mixer_type=name, num_labels=2)
    except ValueError as err:
        pytest.skip(f"{name} needs options the tiny config does not give: {err}")
    model = HydraForTokenClassification(config).eval()
    ids = make_inputs(HydraForTokenClassification, config, seqlen=12)["input_ids"]
    with torch.no_grad():
        out = model(ids)
        assert out.logits.shape == (2, 12, 2) and torch.isfinite(out.logits).all()
        # left-pad row 0 by 3 and right-pad row 1 by 3: valid logits unchanged
        padded = torch.full((2, 15), 5)
        padded[0, 3:], padded[1, :12] = ids[0], ids[1]
        mask = torch.zeros(2, 15, dtype=torch.long)
        mask[0, 3:], mask[1, :12] = 1, 1
        got = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(got[0, 3:], out.logits[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[1, :12], out.logits[1], atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- config errors
def test_config_errors():
    with pytest.raises(ValueError, match="divisible by headdim"):
        tiny_config(headdim=24)  # 32 * 2 = 64 is not a multiple of 24
    # a config may name a mixer that is not registered yet: the name is checked when a model is built
    with pytest.raises(ValueError, match="unknown mixer 'no_such_mixer'"):
        HydraModel(tiny_config(matrix_mixer_type="no_such_mixer"))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_config(matrix_mixer_type="_test_positional", is_data_dependent=False, max_position_embeddings=None)
    with pytest.raises(ValueError, match="num_attention_heads"):
        tiny_config(matrix_mixer_type="mha", num_attention_heads=5)
    with pytest.raises(ValueError, match="pooling"):
        tiny_config(pooling="max")
    with pytest.raises(ValueError, match="patch_size"):
        tiny_config(image_size=18, patch_size=4)
    with pytest.raises(ValueError, match="use_position_embeddings"):
        tiny_config(use_position_embeddings=True, max_position_embeddings=None)
    # the same values are fine where they do not apply
    tiny_config(matrix_mixer_type="mha", headdim=24)
    tiny_config(matrix_mixer_type="hydra", is_data_dependent=False, max_position_embeddings=None)


def test_config_roundtrip_and_mixer_kwargs(tmp_path):
    config = tiny_config(mixer_options={"scan_impl": "two_pass"}, chunk_size=64, max_position_embeddings=16)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HydraConfig) and loaded.mixer_options == {"scan_impl": "two_pass"}
    model = HydraModel(loaded)
    mixer = model.encoder.layers[0].mixer
    assert isinstance(mixer, Hydra) and mixer.scan_impl == "two_pass"
    assert mixer.chunk_size == 16  # capped by the sequence length, as the reference does
    assert (mixer.d_state, mixer.headdim, mixer.d_inner) == (8, 16, 64)


# ---------------------------------------------------------------------------- converter
def reference_state_dict(*, layers=2, d=32, vocab=VOCAB, d_state=8, headdim=16, expand=2, d_conv=7,
                         prenorm=False, max_pos=None, num_labels=None, mlm=True, seed=0):
    """Random tensors under the key names and shapes of the reference BERT (trainer prefix included)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    d_inner, nheads = expand * d, expand * d // headdim
    conv_dim = d_inner + 4 * d_state
    sd = {"bert.embeddings.word_embeddings.weight": r(vocab, d),
          "bert.embeddings.token_type_embeddings.weight": r(2, d),
          "bert.embeddings.LayerNorm.weight": 1 + r(d), "bert.embeddings.LayerNorm.bias": r(d)}
    if max_pos:
        sd["bert.embeddings.position_embeddings.weight"] = r(max_pos, d)
        sd["bert.embeddings.position_ids"] = torch.arange(max_pos)[None]
    for i in range(layers):
        p = f"bert.encoder.layer.{i}.layer."
        sd.update({
            p + "mixer.in_proj.weight": r(2 * d_inner + 4 * d_state + 2 * nheads, d),
            p + "mixer.conv1d.weight": r(conv_dim, 1, d_conv), p + "mixer.conv1d.bias": r(conv_dim),
            p + "mixer.dt_bias": r(nheads), p + "mixer.A_log": r(nheads), p + "mixer.D": 1 + r(nheads),
            p + "mixer.fc_D.weight": r(nheads, d_inner), p + "mixer.norm.weight": 1 + r(d_inner),
            p + "mixer.out_proj.weight": r(d, d_inner),
            p + "norm.weight": 1 + r(d), p + "norm.bias": r(d)})
    if prenorm:
        sd["bert.encoder.norm_f.weight"], sd["bert.encoder.norm_f.bias"] = 1 + r(d), r(d)
    if mlm:
        sd.update({"cls.predictions.transform.dense.weight": r(d, d), "cls.predictions.transform.dense.bias": r(d),
                   "cls.predictions.transform.LayerNorm.weight": 1 + r(d),
                   "cls.predictions.transform.LayerNorm.bias": r(d),
                   "cls.predictions.decoder.weight": sd["bert.embeddings.word_embeddings.weight"],
                   "cls.predictions.decoder.bias": r(vocab)})
    if num_labels:
        sd.update({"bert.pooler.dense.weight": r(d, d), "bert.pooler.dense.bias": r(d),
                   "classifier.weight": r(num_labels, d), "classifier.bias": r(num_labels)})
    return {"model." + k: v for k, v in sd.items()}


def reference_forward(sd, ids, *, layers, prenorm, d_state, headdim, expand=2, d_conv=7, eps=1e-12):
    """The reference BERT's masked-LM computation written out from its description, with our Hydra
    layer as the mixer (its compatibility with the reference layer is tested with the mixers)."""
    sd = {k[len("model."):]: v for k, v in sd.items()}
    d = sd["bert.embeddings.word_embeddings.weight"].shape[1]
    h = sd["bert.embeddings.word_embeddings.weight"][ids] + sd["bert.embeddings.token_type_embeddings.weight"][0]
    if "bert.embeddings.position_embeddings.weight" in sd:
        h = h + sd["bert.embeddings.position_embeddings.weight"][: ids.shape[1]]
    h = F.layer_norm(h, (d,), sd["bert.embeddings.LayerNorm.weight"], sd["bert.embeddings.LayerNorm.bias"], eps)
    for i in range(layers):
        p = f"bert.encoder.layer.{i}.layer."
        mixer = Hydra(d, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim, chunk_size=8)
        mixer.load_state_dict({k[len(p + "mixer."):]: v for k, v in sd.items() if k.startswith(p + "mixer.")})
        norm = lambda x: F.layer_norm(x, (d,), sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-5)  # noqa: E731
        h = h + mixer(norm(h)) if prenorm else norm(h + mixer(h))
    if prenorm:
        h = F.layer_norm(h, (d,), sd["bert.encoder.norm_f.weight"], sd["bert.encoder.norm_f.bias"], eps)
    t = F.gelu(F.linear(h, sd["cls.predictions.transform.dense.weight"], sd["cls.predictions.transform.dense.bias"]))
    t = F.layer_norm(t, (d,), sd["cls.predictions.transform.LayerNorm.weight"],
                     sd["cls.predictions.transform.LayerNorm.bias"], eps)
    return F.linear(t, sd["cls.predictions.decoder.weight"], sd["cls.predictions.decoder.bias"])


@pytest.mark.parametrize("layout", ["flat", "trainer", "safetensors"])
@pytest.mark.parametrize("prenorm, max_pos", [(False, None), (True, 24)], ids=["postnorm", "prenorm-pos"])
def test_converter_roundtrip(tmp_path, layout, prenorm, max_pos):
    sd = reference_state_dict(layers=3, d_state=8, headdim=16, prenorm=prenorm, max_pos=max_pos)
    if layout == "safetensors":
        from safetensors.torch import save_file

        ckpt = tmp_path / "ref.safetensors"
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(ckpt))
    else:
        ckpt = tmp_path / "ref.pt"
        obj = sd if layout == "flat" else {"state": {"model": sd, "optimizers": {}}, "rng": [], "epoch": 3}
        torch.save(obj, ckpt)
    out = tmp_path / "hf"
    assert convert_reference.main([str(ckpt), str(out)]) == 0

    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(model) is HydraForMaskedLM
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.d_state, c.headdim, c.expand, c.d_conv) == \
        (VOCAB, 32, 3, 8, 16, 2, 7)
    assert c.is_prenorm == prenorm and c.use_position_embeddings == (max_pos is not None)
    assert c.matrix_mixer_type == "hydra"
    # tensors land where they belong
    flat = {k[len("model."):]: v for k, v in sd.items()}
    torch.testing.assert_close(model.hydra.encoder.layers[2].mixer.A_log.data, flat["bert.encoder.layer.2.layer.mixer.A_log"])
    torch.testing.assert_close(model.hydra.encoder.layers[1].norm.bias.data, flat["bert.encoder.layer.1.layer.norm.bias"])
    torch.testing.assert_close(model.lm_head.decoder.bias.data, flat["cls.predictions.decoder.bias"])
    assert model.lm_head.decoder.weight is model.hydra.embeddings.word_embeddings.weight
    # and compute what the reference computes
    ids = torch.randint(1, VOCAB, (2, 13), generator=torch.Generator().manual_seed(3))
    expected = reference_forward(sd, ids, layers=3, prenorm=prenorm, d_state=8, headdim=16)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_converter_classification_checkpoint_and_yaml(tmp_path):
    sd = reference_state_dict(num_labels=3, mlm=False)
    ckpt = tmp_path / "glue.pt"
    torch.save({"state": {"model": sd}}, ckpt)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("max_seq_len: 48\nmodel:\n  name: bert\n  model_config:\n    num_hidden_layers: 2\n"
                        "    max_position_embeddings: ${max_seq_len}\n    use_position_embeddings: False\n"
                        "    hidden_size: 32\n    chunk_size: 16\n    alibi_starting_size: 512\n    pool_all: true\n")
    model = convert_reference.convert(str(ckpt), str(tmp_path / "out"), yaml_path=str(run_yaml))
    assert type(model) is HydraForSequenceClassification
    assert model.config.num_labels == 3 and model.config.max_position_embeddings == 48 and model.config.chunk_size == 16
    assert model.config.pooling == "mean"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    flat = {k[len("model."):]: v for k, v in sd.items()}
    torch.testing.assert_close(loaded.classifier.weight.data, flat["classifier.weight"])
    torch.testing.assert_close(loaded.hydra.pooler.dense.bias.data, flat["bert.pooler.dense.bias"])


def test_converter_refuses_pickled_objects(tmp_path, capsys):
    sd = reference_state_dict()
    ckpt = tmp_path / "full.pt"
    torch.save({"state": {"model": sd, "timestamp": argparse.Namespace(epoch=1)}}, ckpt)
    assert convert_reference.main([str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "weights_only" in err and "never unpickles" in err
    assert not (tmp_path / "out").exists()


def test_converter_errors(tmp_path):
    sd = reference_state_dict()
    # a mixer that is not Hydra-shaped needs its name from a config
    broken = {k: v for k, v in sd.items() if not k.endswith("mixer.A_log")}
    torch.save(broken, tmp_path / "x.pt")
    with pytest.raises(convert_reference.ConversionError, match="matrix_mixer_type"):
        convert_reference.convert(str(tmp_path / "x.pt"), str(tmp_path / "o1"))
    # stray keys are reported, not silently dropped
    torch.save({**sd, "model.bert.encoder.layer.0.layer.extra.weight": torch.zeros(2)}, tmp_path / "y.pt")
    with pytest.raises(convert_reference.ConversionError, match="extra.weight"):
        convert_reference.convert(str(tmp_path / "y.pt"), str(tmp_path / "o2"))
    # an untied decoder is not a reference masked LM
    untied = dict(sd)
    untied["model.cls.predictions.decoder.weight"] = sd["model.cls.predictions.decoder.weight"] + 1
    torch.save(untied, tmp_path / "z.pt")
    with pytest.raises(convert_reference.ConversionError, match="ties"):
        convert_reference.convert(str(tmp_path / "z.pt"), str(tmp_path / "o3"))
    with pytest.raises(convert_reference.ConversionError, match="not found"):
        convert_reference.convert(str(tmp_path / "missing.pt"), str(tmp_path / "o4"))


def to_reference_keys(state_dict):
    """Our masked-LM keys under the reference's names (the inverse of the converter's renaming)."""
    rules = [(r"^hydra\.embeddings\.", "bert.embeddings."),
             (r"^hydra\.encoder\.layers\.(\d+)\.mixer\.", r"bert.encoder.layer.\1.layer.mixer."),
             (r"^hydra\.encoder\.layers\.(\d+)\.norm\.", r"bert.encoder.layer.\1.layer.norm."),
             (r"^hydra\.encoder\.norm_f\.", "bert.encoder.norm_f."),
             (r"^lm_head\.dense\.", "cls.predictions.transform.dense."),
             (r"^lm_head\.layer_norm\.", "cls.predictions.transform.LayerNorm."),
             (r"^lm_head\.decoder\.", "cls.predictions.decoder.")]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            if re.search(pattern, key):
                out["model." + re.sub(pattern, repl, key)] = value.clone()
                break
        else:
            raise AssertionError(f"no reference name for {key}")
    return out


def test_converter_matrix_mixer_with_config_and_overrides(tmp_path):
    """A non-Hydra mixer: its name and options come from a config.json and --set."""
    name = "toeplitz" if "toeplitz" in available_mixers() else "_test_positional"
    torch.manual_seed(0)
    config = tiny_config(matrix_mixer_type=name, is_data_dependent=False, max_position_embeddings=20, headdim=16)
    original = HydraForMaskedLM(config).eval()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(to_reference_keys(original.state_dict()), tmp_path / "mm.pt")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "architectures": ["BertForMaskedLM"], "matrix_mixer_type": name,
         "is_data_dependent": False, "max_position_embeddings": 64, "headdim": 16, "alibi_starting_size": 512}))
    out = tmp_path / "hf"
    argv = [str(tmp_path / "mm.pt"), str(out), "--config", str(tmp_path / "config.json"),
            "--set", "max_position_embeddings=20", "--set", "chunk_size=8"]
    assert convert_reference.main(argv) == 0
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert model.config.matrix_mixer_type == name and model.config.max_position_embeddings == 20
    ids = torch.randint(1, VOCAB, (2, 20))
    torch.testing.assert_close(model(ids).logits, original(ids).logits)
