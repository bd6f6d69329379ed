"""A catalogue of bad and edge-case calls across the public API, one line per case.

Each case is ``(callable, expected exception type, message regex)``. An expected
exception of ``None`` marks an input the library accepts: the callable then
checks the result itself (an AssertionError means a silently wrong result).

``python tests/models/test_bad_inputs.py`` prints the outcome counts (clear error,
cryptic error, silently wrong, correct) and every case that is not as expected.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hydra_ssm import Hydra, MatrixMixer, MultiHeadAttention, build_mixer  # noqa: E402
from hydra_ssm.mixers import get_mixer_class, matrix_mixer_types  # noqa: E402
from hydra_ssm.models import (  # noqa: E402
    HydraConfig,
    HydraForImageClassification,
    HydraForMaskedLM,
    HydraForSequenceClassification,
    HydraForTokenClassification,
    HydraModel,
)

D = 16
VOCAB = 40
TINY_HYDRA = dict(d_model=D, d_state=4, d_conv=3, headdim=8, expand=2, chunk_size=4)
MM_TYPES = matrix_mixer_types()  # every registered matrix class
TEXT_HEADS = [HydraModel, HydraForMaskedLM, HydraForSequenceClassification, HydraForTokenClassification]


# ---------------------------------------------------------------------------- builders
def hydra(**kw):
    return Hydra(**{**TINY_HYDRA, **kw})


def mm(name, **kw):
    """A tiny matrix mixer by name, in its data-independent form for the DI-only class."""
    base = dict(headdim=8, qk_dim=4, max_seq_len=8, d_conv=3, chunk_size=4)
    if name == "dense":
        base["is_data_dependent"] = False
    return build_mixer(name, D, **{**base, **kw})


def mha(**kw):
    return MultiHeadAttention(**{"d_model": D, "num_heads": 4, **kw})


def cfg(**kw):
    values = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=1, d_state=4, headdim=8, chunk_size=4,
                  num_attention_heads=4, max_position_embeddings=16, hidden_dropout_prob=0.0, image_size=8,
                  patch_size=4, num_channels=3, num_labels=3)
    return HydraConfig(**{**values, **kw})


@functools.lru_cache(maxsize=None)
def _model(cls, items):
    torch.manual_seed(0)
    return cls(cfg(**dict(items))).eval()


def model(cls, **kw):
    return _model(cls, tuple(sorted(kw.items())))


def ids(b=2, l=6, low=1, high=VOCAB):
    return torch.randint(low, high, (b, l), generator=torch.Generator().manual_seed(0))


def x(b=2, l=6, d=D, dtype=torch.float32):
    return torch.randn(b, l, d, generator=torch.Generator().manual_seed(1)).to(dtype)


def with_bad(t, index, value):
    t = t.clone()
    t.view(-1)[index] = value
    return t


# ---------------------------------------------------------------------------- accepted inputs: checks
def expect(ok: bool) -> None:
    assert ok


def check_batch0(layer):
    out = layer(x(b=0))
    assert out.shape == (0, 6, D), out.shape


def check_float64_parameters(layer):
    wrong = [n for n, p in layer.named_parameters() if p.dtype != torch.float64]
    assert not wrong, f"not float64: {wrong}"


def check_same_as_float32(layer_fn):
    """A float32 layer under bf16 autocast runs and stays close to its float32 output."""
    layer = layer_fn()
    u = x()
    ref = layer(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(u)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.2 * ref.abs().max() + 0.05


def check_strict_false_bundle(name):
    layer = build_mixer(name, D, strict=False, headdim=8, qk_dim=4, max_seq_len=8, d_state=4, ngroups=1,
                        is_data_dependent=name != "dense", num_heads=4, scan_impl="fused")
    assert layer(x()).shape == (2, 6, D)


def check_mlm_all_ignored():
    m = model(HydraForMaskedLM).train()
    out = m(ids(), labels=torch.full((2, 6), -100))
    m.eval()
    assert out.loss is not None and out.loss.grad_fn is not None, "loss must stay differentiable"
    assert out.loss.item() == 0.0, out.loss.item()
    out.loss.backward()


def check_tokcls_all_ignored():
    m = model(HydraForTokenClassification).train()
    out = m(ids(), labels=torch.full((2, 6), -100))
    m.eval()
    assert out.loss.grad_fn is not None and out.loss.item() == 0.0, out.loss.item()


def check_zero_types_without_type_embeddings():
    m = model(HydraModel, type_vocab_size=0)
    torch.testing.assert_close(m(ids(), token_type_ids=torch.zeros(2, 6, dtype=torch.long)).last_hidden_state,
                               m(ids()).last_hidden_state)


def check_mlm_loss_matches_cross_entropy():
    m = model(HydraForMaskedLM)
    labels = with_bad(with_bad(ids(), 0, -100), 7, -100)
    out = m(ids(), labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB), labels.reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def check_seqcls_loss_matches_cross_entropy():
    m = model(HydraForSequenceClassification)
    labels = torch.tensor([2, 0])
    out = m(ids(), labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def check_failed_call_keeps_problem_type():
    """Labels that fail the checks must not fix the problem type of later calls."""
    m = HydraForSequenceClassification(cfg())
    try:
        m(ids(), labels=torch.tensor([[0.0, 1.0]]))
    except ValueError:
        pass
    assert m.config.problem_type is None, m.config.problem_type
    assert m(ids(), labels=torch.tensor([2, 0])).loss.isfinite()


def check_model_batch0(cls):
    out = model(cls)(ids(b=0))
    first = out[0] if not hasattr(out, "logits") else out.logits
    assert first.shape[0] == 0


def check_float_mask_of_ones():
    m = model(HydraModel)
    torch.testing.assert_close(m(ids(), attention_mask=torch.ones(2, 6)).last_hidden_state,
                               m(ids()).last_hidden_state)


def check_fully_padded_row_is_finite(layer):
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = layer(x(), attention_mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


def check_generic_fields_build_any_mixer():
    """The config's generic fields reach every mixer that takes them, and only those."""
    for name in ("hydra", "mha", "toeplitz"):
        c = cfg(matrix_mixer_type=name)
        HydraModel(c)


def check_dft_roundtrip():
    layer = mm("vandermonde", is_data_dependent=False)
    fresh = mm("vandermonde", is_data_dependent=False)
    fresh.load_state_dict(layer.state_dict())


def load_corrupted_dft():
    layer = mm("vandermonde", is_data_dependent=False)
    sd = layer.state_dict()
    sd["matrix_mixer.dft_matrix"] = sd["matrix_mixer.dft_matrix"] + 0.5
    layer.load_state_dict(sd)


def load_wrong_shape_dft():
    layer = mm("vandermonde", is_data_dependent=False)
    sd = layer.state_dict()
    sd["matrix_mixer.dft_matrix"] = torch.zeros(4, 4)
    layer.load_state_dict(sd)


def load_with_config(cls=HydraConfig, text=None, **changes):
    """Save a tiny model, edit (or replace) its config.json, load it back with ``cls``."""
    with tempfile.TemporaryDirectory() as tmp:
        model(HydraModel).save_pretrained(tmp)
        path = pathlib.Path(tmp) / "config.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data) if text is None else text)
        return cls.from_pretrained(tmp)


def load_vandermonde_dft(change: float):
    """Save a model with the DFT vandermonde mixer, add ``change`` to its stored dft_matrix, load it
    back with from_pretrained and check the outputs."""
    from safetensors.torch import load_file, save_file

    m = model(HydraModel, matrix_mixer_type="vandermonde", is_data_dependent=False)
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp)
        path = pathlib.Path(tmp) / "model.safetensors"
        sd = load_file(path)
        key = next(k for k in sd if k.endswith("dft_matrix"))
        sd[key] = sd[key] + change
        save_file(sd, path, metadata={"format": "pt"})
        loaded = HydraModel.from_pretrained(tmp).eval()
    assert torch.equal(loaded(ids()).last_hidden_state, m(ids()).last_hidden_state)
    assert not any("dft" in name for name, _ in loaded.named_parameters())


def load_with_weights(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        model(HydraModel).save_pretrained(tmp)
        (pathlib.Path(tmp) / "model.safetensors").write_bytes(data)
        return HydraModel.from_pretrained(tmp)


MM_BAD = []
for _n in MM_TYPES:
    _di = _n == "dense"
    MM_BAD += [
        pytest.param(lambda n=_n: mm(n, headdim=7), ValueError, r"divisible by headdim \(7\)", id=f"{_n}-headdim"),
        pytest.param(lambda n=_n: mm(n, qk_dim=0), ValueError, r"qk_dim must be a positive integer, got 0", id=f"{_n}-qk_dim0"),
        pytest.param(lambda n=_n: mm(n, d_conv=4), ValueError, r"d_conv must be odd", id=f"{_n}-d_conv-even"),
        pytest.param(lambda n=_n: mm(n, chunk_size=0), ValueError, r"chunk_size must be a positive integer, got 0", id=f"{_n}-chunk0"),
        pytest.param(lambda n=_n: mm(n, conv_init=-0.5), ValueError, r"conv_init must be a positive number", id=f"{_n}-conv_init-neg"),
        pytest.param(lambda n=_n: mm(n, d_sate=4), ValueError, r"unknown option 'd_sate' .*did you mean 'd_state'|unknown option 'd_sate'", id=f"{_n}-typo"),
        pytest.param(lambda n=_n: mm(n, conv_bias="off"), ValueError, r"conv_bias must be True or False, got 'off'", id=f"{_n}-conv_bias-str"),
        pytest.param(lambda n=_n: mm(n, dtype=torch.long), ValueError, r"dtype must be a floating-point dtype.*got torch.int64", id=f"{_n}-int-dtype"),
        pytest.param(lambda n=_n: mm(n)(x(l=0)), ValueError, r"at least one position", id=f"{_n}-L0"),
        pytest.param(lambda n=_n: mm(n)(x(dtype=torch.float64)), ValueError, r"u has dtype torch.float64 but the layer's parameters are torch.float32", id=f"{_n}-float64-input"),
        pytest.param(lambda n=_n: mm(n)(x(dtype=torch.bfloat16)), ValueError, r"u has dtype torch.bfloat16 but the layer's parameters are torch.float32", id=f"{_n}-bf16-input"),
        pytest.param(lambda n=_n: check_batch0(mm(n)), None, "", id=f"{_n}-batch0"),
        pytest.param(lambda n=_n: check_float64_parameters(mm(n, dtype=torch.float64)), None, "", id=f"{_n}-dtype-float64"),
        pytest.param(lambda n=_n: check_strict_false_bundle(n), None, "", id=f"{_n}-strict-false-bundle"),
        pytest.param(lambda n=_n: check_fully_padded_row_is_finite(mm(n)), None, "", id=f"{_n}-padded-row"),
    ]
    if "di" not in get_mixer_class(_n).forms:  # a data-dependent-only class refuses the DI form clearly
        MM_BAD.append(pytest.param(lambda n=_n: mm(n, is_data_dependent=False), ValueError,
                                   r"has no data-independent form", id=f"{_n}-no-di"))
        continue
    MM_BAD += [
        pytest.param(lambda n=_n: check_float64_parameters(mm(n, dtype=torch.float64, is_data_dependent=False)), None, "", id=f"{_n}-di-dtype-float64"),
        pytest.param(lambda n=_n: mm(n, is_data_dependent=False, max_seq_len=4)(x()), ValueError, r"sequence length 6 exceeds max_seq_len=4", id=f"{_n}-di-too-long"),
    ]

CASES = [
    # ------------------------------------------------------------------ Hydra constructor
    pytest.param(lambda: hydra(d_model=0), ValueError, r"d_model must be a positive integer, got 0", id="hydra-d_model0"),
    pytest.param(lambda: hydra(d_model=16.0), ValueError, r"d_model must be a positive integer, got 16.0", id="hydra-d_model-float"),
    pytest.param(lambda: hydra(d_state=0), ValueError, r"d_state must be a positive integer", id="hydra-d_state0"),
    pytest.param(lambda: hydra(d_conv=4), ValueError, r"d_conv must be odd", id="hydra-d_conv-even"),
    pytest.param(lambda: hydra(expand=0), ValueError, r"expand must be a positive integer", id="hydra-expand0"),
    pytest.param(lambda: hydra(headdim=7), ValueError, r"must be divisible by headdim \(7\)", id="hydra-headdim"),
    pytest.param(lambda: hydra(headdim=0), ValueError, r"headdim must be a positive integer", id="hydra-headdim0"),
    pytest.param(lambda: hydra(ngroups=3), ValueError, r"heads \(4\) must be divisible by ngroups \(3\)", id="hydra-ngroups"),
    pytest.param(lambda: hydra(ngroups=0), ValueError, r"ngroups must be a positive integer", id="hydra-ngroups0"),
    pytest.param(lambda: hydra(chunk_size=0), ValueError, r"chunk_size must be a positive integer, got 0", id="hydra-chunk0"),
    pytest.param(lambda: hydra(activation="relu"), ValueError, r"activation must be one of .*got 'relu'", id="hydra-activation"),
    pytest.param(lambda: hydra(scan_impl="fusd"), ValueError, r"scan_impl must be one of .*got 'fusd'.*did you mean 'fused'", id="hydra-scan_impl"),
    pytest.param(lambda: hydra(dt_min=0.0), ValueError, r"dt_min must be a positive number, got 0.0", id="hydra-dt_min0"),
    pytest.param(lambda: hydra(dt_min=0.5, dt_max=0.1), ValueError, r"need 0 < dt_min <= dt_max", id="hydra-dt_min-gt-max"),
    pytest.param(lambda: hydra(dt_limit=5), ValueError, r"dt_limit must be a pair \(low, high\).*got 5", id="hydra-dt_limit-scalar"),
    pytest.param(lambda: hydra(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit must be a pair \(low, high\) with 0 <= low < high", id="hydra-dt_limit-order"),
    pytest.param(lambda: hydra(dt_limit=(-1.0, 1.0)), ValueError, r"dt_limit must be a pair \(low, high\) with 0 <= low < high", id="hydra-dt_limit-negative"),
    pytest.param(lambda: hydra(dt_limit=("a", "b")), ValueError, r"dt_limit must be a pair \(low, high\)", id="hydra-dt_limit-strings"),
    pytest.param(lambda: hydra(dt_init_floor=-1.0), ValueError, r"dt_init_floor must be a non-negative number", id="hydra-dt_init_floor"),
    pytest.param(lambda: hydra(conv_init=-0.5), ValueError, r"conv_init must be a positive number or None, got -0.5", id="hydra-conv_init-neg"),
    pytest.param(lambda: hydra(conv_init="big"), ValueError, r"conv_init must be a positive number or None", id="hydra-conv_init-str"),
    pytest.param(lambda: hydra(dtype=torch.long), ValueError, r"dtype must be a floating-point dtype.*got torch.int64", id="hydra-int-dtype"),
    pytest.param(lambda: hydra(bias="no"), ValueError, r"bias must be True or False, got 'no'", id="hydra-bias-str"),
    pytest.param(lambda: hydra(learnable_init_states=1), ValueError, r"learnable_init_states must be True or False", id="hydra-init-states-int"),
    pytest.param(lambda: mha(bias="yes"), ValueError, r"bias must be True or False", id="mha-bias-str"),
    pytest.param(lambda: hydra(d_sate=4), TypeError, r"d_sate", id="hydra-direct-typo"),
    pytest.param(lambda: check_float64_parameters(hydra(dtype=torch.float64)), None, "", id="hydra-dtype-float64"),
    pytest.param(lambda: check_float64_parameters(hydra(dtype=torch.float64, learnable_init_states=True)), None, "", id="hydra-dtype-float64-init-states"),
    # ------------------------------------------------------------------ Hydra forward
    pytest.param(lambda: hydra()(torch.randn(16)), ValueError, r"got a 1-D tensor", id="hydra-1d"),
    pytest.param(lambda: hydra()(torch.randn(6, 16)), ValueError, r"got a 2-D tensor", id="hydra-2d"),
    pytest.param(lambda: hydra()(torch.randn(1, 2, 6, 16)), ValueError, r"got a 4-D tensor", id="hydra-4d"),
    pytest.param(lambda: hydra()(x(d=15)), ValueError, r"expected d_model=16", id="hydra-width"),
    pytest.param(lambda: hydra()(x(l=0)), ValueError, r"at least one position", id="hydra-L0"),
    pytest.param(lambda: check_batch0(hydra()), None, "", id="hydra-batch0"),
    pytest.param(lambda: check_batch0(hydra(scan_impl="two_pass")), None, "", id="hydra-batch0-two-pass"),
    pytest.param(lambda: hydra()(x(dtype=torch.float64)), ValueError, r"u has dtype torch.float64 but the layer's parameters are torch.float32", id="hydra-float64-input"),
    pytest.param(lambda: hydra()(x(dtype=torch.float16)), ValueError, r"u has dtype torch.float16 but the layer's parameters are torch.float32", id="hydra-fp16-input"),
    pytest.param(lambda: hydra()(x(dtype=torch.bfloat16)), ValueError, r"u has dtype torch.bfloat16 but the layer's parameters are torch.float32", id="hydra-bf16-input"),
    pytest.param(lambda: hydra(dtype=torch.float64)(x()), ValueError, r"u has dtype torch.float32 but the layer's parameters are torch.float64", id="hydra64-float32-input"),
    pytest.param(lambda: check_same_as_float32(hydra), None, "", id="hydra-autocast-bf16"),
    pytest.param(lambda: hydra()(torch.ones(2, 6, 16, dtype=torch.long)), ValueError, r"floating-point", id="hydra-int-input"),
    pytest.param(lambda: hydra()(with_bad(x(), 3, float("nan"))), ValueError, r"NaN or infinite", id="hydra-nan"),
    pytest.param(lambda: hydra()(with_bad(x(), 3, float("inf"))), ValueError, r"NaN or infinite", id="hydra-inf"),
    pytest.param(lambda: hydra()(x().tolist()), ValueError, r"must be a torch.Tensor", id="hydra-list"),
    pytest.param(lambda: hydra()(x(), attention_mask=torch.ones(2, 5)), ValueError, r"attention_mask must have shape", id="hydra-mask-shape"),
    pytest.param(lambda: hydra()(x(), attention_mask=torch.ones(2, 6, 1)), ValueError, r"attention_mask must have shape", id="hydra-mask-3d"),
    pytest.param(lambda: hydra()(x(), attention_mask=torch.full((2, 6), 0.5)), ValueError, r"only 0 and 1", id="hydra-mask-half"),
    pytest.param(lambda: hydra()(x(), attention_mask=torch.full((2, 6), 2)), ValueError, r"only 0 and 1", id="hydra-mask-two"),
    pytest.param(lambda: hydra()(x(), attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1]] * 2)), ValueError, r"contiguous", id="hydra-mask-holes"),
    pytest.param(lambda: hydra()(x(), attention_mask=[[1] * 6] * 2), ValueError, r"torch.Tensor", id="hydra-mask-list"),
    pytest.param(lambda: check_fully_padded_row_is_finite(hydra()), None, "", id="hydra-padded-row"),
    pytest.param(lambda: hydra().materialize(x(l=0)), ValueError, r"at least one position", id="hydra-materialize-L0"),
    pytest.param(lambda: hydra().materialize(x(dtype=torch.float64)), ValueError, r"u has dtype torch.float64", id="hydra-materialize-dtype"),
    # ------------------------------------------------------------------ registry
    pytest.param(lambda: build_mixer("hydar", D), ValueError, r"unknown mixer 'hydar'.*did you mean 'hydra'", id="registry-unknown-name"),
    pytest.param(lambda: build_mixer("hydra", D, d_sate=4), ValueError, r"unknown option 'd_sate' for the 'hydra' mixer; did you mean 'd_state'", id="registry-typo-strict"),
    pytest.param(lambda: build_mixer("hydra", D, strict=False, d_sate=4), ValueError, r"unknown option 'd_sate'.*did you mean 'd_state'", id="registry-typo-nonstrict"),
    pytest.param(lambda: build_mixer("vandermonde", D, strict=False, is_data_dependent=False, max_seq_len=8, headdim=8, is_dtf=False), ValueError, r"unknown option 'is_dtf'.*did you mean 'is_dft'", id="registry-is_dtf-nonstrict"),
    pytest.param(lambda: build_mixer("vandermonde", D, is_data_dependent=False, max_seq_len=8, headdim=8, is_dtf=False), ValueError, r"unknown option 'is_dtf'.*did you mean 'is_dft'", id="registry-is_dtf-strict"),
    pytest.param(lambda: build_mixer("hydra", D, is_dft=False), ValueError, r"unknown option 'is_dft' for the 'hydra' mixer", id="registry-foreign-option-strict"),
    pytest.param(lambda: expect(build_mixer("hydra", D, headdim=8, d_state=4, strict=False, is_dft=False).d_state == 4), None, "", id="registry-foreign-option-nonstrict"),
    pytest.param(lambda: build_mixer(3, D), ValueError, r"unknown mixer 3", id="registry-name-int"),
    # ------------------------------------------------------------------ MatrixMixer (by class)
    pytest.param(lambda: MatrixMixer("nope", True, D, 4, max_seq_len=8, headdim=8), ValueError, r"unknown matrix_mixer_type 'nope'", id="mm-unknown"),
    pytest.param(lambda: MatrixMixer("toeplits", True, D, 4, max_seq_len=8, headdim=8), ValueError, r"unknown matrix_mixer_type 'toeplits'.*did you mean 'toeplitz'", id="mm-unknown-close"),
    pytest.param(lambda: MatrixMixer("hydra", True, D, 4), ValueError, r"unknown matrix_mixer_type 'hydra'", id="mm-hydra-not-matrix"),
    pytest.param(lambda: MatrixMixer(d_model=D), ValueError, r"needs matrix_mixer_type", id="mm-no-type"),
    pytest.param(lambda: MatrixMixer("dense", True, D, 4, max_seq_len=8, headdim=8), ValueError, r"no data-dependent form", id="mm-dense-sam"),
    pytest.param(lambda: MatrixMixer("low_rank", False, D, 4, headdim=8), ValueError, r"needs max_seq_len", id="mm-no-max_seq_len"),
    pytest.param(lambda: MatrixMixer("low_rank", "yes", D, 4, max_seq_len=8, headdim=8), ValueError, r"is_data_dependent must be a bool", id="mm-form-str"),
    pytest.param(lambda: MatrixMixer("low_rank", True, D, 4, max_seq_len=0, headdim=8), ValueError, r"max_seq_len must be a positive integer", id="mm-max_seq_len0"),
    pytest.param(lambda: MatrixMixer("low_rank", True, None, 4, max_seq_len=8, headdim=8), ValueError, r"d_model must be a positive integer, got None", id="mm-no-d_model"),
    pytest.param(lambda: MatrixMixer("low_rank", True, D, 4, max_seq_len=8, headdim=8, activation="gelu"), ValueError, r"activation must be one of", id="mm-activation"),
    pytest.param(lambda: MatrixMixer("vandermonde", False, D, 4, max_seq_len=8, headdim=8, is_dft="no"), ValueError, r"is_dft must be True or False, got 'no'", id="mm-is_dft-str"),
    pytest.param(lambda: MatrixMixer("vandermonde", False, D, 4, max_seq_len=8, headdim=8, is_dtf=False), ValueError, r"unknown option 'is_dtf'.*did you mean 'is_dft'", id="mm-is_dtf"),
    pytest.param(lambda: check_dft_roundtrip(), None, "", id="mm-dft-roundtrip"),
    pytest.param(load_corrupted_dft, RuntimeError, r"dft_matrix differs from the cosine DFT", id="mm-dft-corrupted"),
    pytest.param(load_wrong_shape_dft, RuntimeError, r"size mismatch for matrix_mixer.dft_matrix", id="mm-dft-shape"),
    *MM_BAD,
    # ------------------------------------------------------------------ MultiHeadAttention
    pytest.param(lambda: mha(num_heads=0), ValueError, r"num_heads must be a positive integer, got 0", id="mha-heads0"),
    pytest.param(lambda: mha(num_heads=3), ValueError, r"d_model \(16\) must be divisible by num_heads \(3\)", id="mha-heads3"),
    pytest.param(lambda: mha(d_model=0), ValueError, r"d_model must be a positive integer, got 0", id="mha-d_model0"),
    pytest.param(lambda: mha(dropout=2.0), ValueError, r"dropout must be a probability in \[0, 1\], got 2.0", id="mha-dropout2"),
    pytest.param(lambda: mha(dropout=-0.1), ValueError, r"dropout must be a probability in \[0, 1\]", id="mha-dropout-neg"),
    pytest.param(lambda: mha(dtype=torch.long), ValueError, r"dtype must be a floating-point dtype", id="mha-int-dtype"),
    pytest.param(lambda: mha()(x(dtype=torch.float64)), ValueError, r"u has dtype torch.float64 but the layer's parameters are torch.float32", id="mha-float64-input"),
    pytest.param(lambda: mha()(x(dtype=torch.float16)), ValueError, r"u has dtype torch.float16", id="mha-fp16-input"),
    pytest.param(lambda: mha()(x(l=0)), ValueError, r"at least one position", id="mha-L0"),
    pytest.param(lambda: mha()(x(d=8)), ValueError, r"expected d_model=16", id="mha-width"),
    pytest.param(lambda: check_batch0(mha()), None, "", id="mha-batch0"),
    pytest.param(lambda: check_same_as_float32(mha), None, "", id="mha-autocast-bf16"),
    pytest.param(lambda: check_fully_padded_row_is_finite(mha()), None, "", id="mha-padded-row"),
    pytest.param(lambda: check_float64_parameters(mha(dtype=torch.float64)), None, "", id="mha-dtype-float64"),
    pytest.param(lambda: mha()(x(), attention_mask=torch.ones(2, 7)), ValueError, r"attention_mask must have shape", id="mha-mask-shape"),
    # ------------------------------------------------------------------ HydraConfig
    pytest.param(lambda: cfg(vocab_size=0), ValueError, r"HydraConfig.vocab_size must be a positive integer, got 0", id="cfg-vocab0"),
    pytest.param(lambda: cfg(hidden_size=-8), ValueError, r"HydraConfig.hidden_size must be a positive integer", id="cfg-hidden-neg"),
    pytest.param(lambda: cfg(num_hidden_layers=0), ValueError, r"HydraConfig.num_hidden_layers must be a positive integer", id="cfg-layers0"),
    pytest.param(lambda: cfg(chunk_size=0), ValueError, r"HydraConfig.chunk_size must be a positive integer, got 0", id="cfg-chunk0"),
    pytest.param(lambda: cfg(chunk_size=-3), ValueError, r"HydraConfig.chunk_size must be a positive integer", id="cfg-chunk-neg"),
    pytest.param(lambda: cfg(d_state=0), ValueError, r"HydraConfig.d_state must be a positive integer", id="cfg-d_state0"),
    pytest.param(lambda: cfg(d_conv=4), ValueError, r"d_conv must be odd", id="cfg-d_conv-even"),
    pytest.param(lambda: cfg(expand=0), ValueError, r"HydraConfig.expand must be a positive integer", id="cfg-expand0"),
    pytest.param(lambda: cfg(headdim=0), ValueError, r"HydraConfig.headdim must be a positive integer", id="cfg-headdim0"),
    pytest.param(lambda: cfg(headdim=12), ValueError, r"divisible by headdim \(12\)", id="cfg-headdim"),
    pytest.param(lambda: cfg(ngroups=3), ValueError, r"divisible by ngroups \(3\)", id="cfg-ngroups"),
    pytest.param(lambda: cfg(qk_dim=0), ValueError, r"HydraConfig.qk_dim must be a positive integer", id="cfg-qk0"),
    pytest.param(lambda: cfg(num_attention_heads=0, matrix_mixer_type="mha"), ValueError, r"HydraConfig.num_attention_heads must be a positive integer", id="cfg-heads0"),
    pytest.param(lambda: cfg(num_attention_heads=5, matrix_mixer_type="mha"), ValueError, r"num_attention_heads", id="cfg-heads5"),
    pytest.param(lambda: cfg(hidden_dropout_prob=2), ValueError, r"HydraConfig.hidden_dropout_prob must be a probability in \[0, 1\], got 2", id="cfg-dropout2"),
    pytest.param(lambda: cfg(hidden_dropout_prob=-0.1), ValueError, r"HydraConfig.hidden_dropout_prob must be a probability", id="cfg-dropout-neg"),
    pytest.param(lambda: cfg(attention_probs_dropout_prob=1.5), ValueError, r"HydraConfig.attention_probs_dropout_prob must be a probability", id="cfg-attn-dropout"),
    pytest.param(lambda: cfg(classifier_dropout=3.0), ValueError, r"HydraConfig.classifier_dropout must be a probability", id="cfg-cls-dropout"),
    pytest.param(lambda: cfg(hidden_act="gelux"), ValueError, r"HydraConfig.hidden_act must be one of .*got 'gelux'.*did you mean 'gelu'", id="cfg-act"),
    pytest.param(lambda: cfg(pad_token_id=VOCAB), ValueError, r"HydraConfig.pad_token_id must be in \[0, 40\).*got 40", id="cfg-pad-vocab"),
    pytest.param(lambda: cfg(pad_token_id=-1), ValueError, r"HydraConfig.pad_token_id must be in \[0, 40\)", id="cfg-pad-neg"),
    pytest.param(lambda: cfg(type_vocab_size=-1), ValueError, r"HydraConfig.type_vocab_size must be a non-negative integer", id="cfg-types-neg"),
    pytest.param(lambda: cfg(intermediate_size=-1), ValueError, r"HydraConfig.intermediate_size must be a non-negative integer", id="cfg-mlp-neg"),
    pytest.param(lambda: cfg(max_position_embeddings=0), ValueError, r"HydraConfig.max_position_embeddings must be a positive integer", id="cfg-mpe0"),
    # a config may name a mixer that is not registered yet (a custom one): the name is checked when a model is built
    pytest.param(lambda: HydraModel(cfg(matrix_mixer_type="hydar")), ValueError, r"HydraConfig.matrix_mixer_type: unknown mixer 'hydar'.*did you mean 'hydra'", id="cfg-mixer-typo"),
    pytest.param(lambda: cfg(matrix_mixer_type=3), ValueError, r"HydraConfig.matrix_mixer_type must be a mixer name", id="cfg-mixer-int"),
    pytest.param(lambda: cfg(pooling="max"), ValueError, r"HydraConfig.pooling must be one of", id="cfg-pooling"),
    pytest.param(lambda: cfg(pooling="maen"), ValueError, r"HydraConfig.pooling must be one of .*did you mean 'mean'", id="cfg-pooling-typo"),
    pytest.param(lambda: cfg(image_size=10), ValueError, r"image_size \(10\) must be divisible by patch_size", id="cfg-image"),
    pytest.param(lambda: cfg(layer_norm_eps=0.0), ValueError, r"HydraConfig.layer_norm_eps must be a positive number", id="cfg-ln-eps0"),
    pytest.param(lambda: cfg(block_norm_eps=-1.0), ValueError, r"HydraConfig.block_norm_eps must be a positive number", id="cfg-block-eps"),
    pytest.param(lambda: cfg(initializer_range=-0.02), ValueError, r"HydraConfig.initializer_range must be a non-negative number", id="cfg-init-range"),
    pytest.param(lambda: cfg(is_data_dependent="yes"), ValueError, r"HydraConfig.is_data_dependent must be True, False or None", id="cfg-form-str"),
    pytest.param(lambda: cfg(mixer_options={"d_sate": 4}), ValueError, r"HydraConfig.mixer_options: unknown option 'd_sate' for the 'hydra' mixer; did you mean 'd_state'", id="cfg-opt-typo"),
    pytest.param(lambda: cfg(matrix_mixer_type="vandermonde", is_data_dependent=False, mixer_options={"is_dtf": False}), ValueError, r"unknown option 'is_dtf'.*did you mean 'is_dft'", id="cfg-opt-is_dtf"),
    pytest.param(lambda: cfg(mixer_options={"is_dft": False}), ValueError, r"unknown option 'is_dft' for the 'hydra' mixer", id="cfg-opt-foreign"),
    pytest.param(lambda: cfg(mixer_options=[("scan_impl", "fused")]), ValueError, r"HydraConfig.mixer_options must be a dict", id="cfg-opt-list"),
    pytest.param(lambda: cfg(mixer_options={"scan_impl": "fusd"}), ValueError, r"scan_impl must be one of", id="cfg-opt-bad-value"),
    pytest.param(lambda: cfg(mixer_options={"dt_limit": 5}), ValueError, r"dt_limit must be a pair", id="cfg-opt-dt_limit"),
    pytest.param(lambda: cfg(d_sate=4), ValueError, r"HydraConfig got an unknown field 'd_sate'; did you mean 'd_state'", id="cfg-field-typo"),
    pytest.param(lambda: cfg(num_labels=0), ValueError, r"HydraConfig.num_labels must be a positive integer, got 0", id="cfg-num-labels0"),
    pytest.param(lambda: cfg(is_prenorm="no"), ValueError, r"HydraConfig.is_prenorm must be True or False, got 'no'", id="cfg-prenorm-str"),
    pytest.param(lambda: cfg(use_position_embeddings=1), ValueError, r"HydraConfig.use_position_embeddings must be True or False", id="cfg-pos-int"),
    pytest.param(lambda: cfg(use_position_embeddings=True, max_position_embeddings=None), ValueError, r"use_position_embeddings", id="cfg-pos-no-mpe"),
    pytest.param(lambda: check_generic_fields_build_any_mixer(), None, "", id="cfg-generic-fields-any-mixer"),
    pytest.param(lambda: cfg(matrix_mixer_type="mha", headdim=12), None, "", id="cfg-headdim-unused"),
    pytest.param(lambda: expect(HydraModel(cfg(chunk_size=64)).encoder.layers[0].mixer.chunk_size == 16), None, "", id="cfg-chunk-capped"),
    # ------------------------------------------------------------------ model inputs
    *[pytest.param(lambda c=c: model(c)(with_bad(ids(), 0, VOCAB + 2)), ValueError, r"input_ids must be in \[0, 40\), got values in \[\d+, \d+\]", id=f"{c.__name__}-ids-high") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(with_bad(ids(), 0, -1)), ValueError, r"input_ids must be in \[0, 40\), got values in \[-1, \d+\]", id=f"{c.__name__}-ids-neg") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(), token_type_ids=torch.full((2, 6), 2)), ValueError, r"token_type_ids must be in \[0, 2\), got values in \[2, 2\]", id=f"{c.__name__}-types-high") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c, type_vocab_size=0)(ids(), token_type_ids=torch.ones(2, 6, dtype=torch.long)), ValueError, r"token_type_ids were given but the model has no token type embeddings \(type_vocab_size=0\)", id=f"{c.__name__}-types-disabled") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c, use_position_embeddings=True)(ids(), position_ids=torch.full((2, 6), 16)), ValueError, r"position_ids must be in \[0, 16\), got values in \[16, 16\]", id=f"{c.__name__}-pos-high") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(), inputs_embeds=x()), ValueError, r"exactly one of input_ids or inputs_embeds", id=f"{c.__name__}-both") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(), ValueError, r"exactly one of input_ids or inputs_embeds", id=f"{c.__name__}-neither") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids()[0]), ValueError, r"input_ids must have shape \(batch, seqlen\), got a 1-D tensor", id=f"{c.__name__}-ids-1d") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids()[None]), ValueError, r"input_ids must have shape \(batch, seqlen\), got a 3-D tensor", id=f"{c.__name__}-ids-3d") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids().float()), ValueError, r"input_ids must be an integer tensor, got torch.float32", id=f"{c.__name__}-ids-float") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(l=0)), ValueError, r"input_ids must have at least one position", id=f"{c.__name__}-L0") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: check_model_batch0(c), None, "", id=f"{c.__name__}-batch0") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(inputs_embeds=x(d=8)), ValueError, r"inputs_embeds must have shape \(batch, seqlen, 16\)", id=f"{c.__name__}-embeds-width") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(inputs_embeds=x()[0]), ValueError, r"inputs_embeds must have shape \(batch, seqlen, 16\)", id=f"{c.__name__}-embeds-2d") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(), attention_mask=torch.ones(2, 5)), ValueError, r"attention_mask must have shape \(batch, seqlen\) = \(2, 6\)", id=f"{c.__name__}-mask-shape") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(), attention_mask=torch.full((2, 6), 3)), ValueError, r"attention_mask .*only 0 and 1", id=f"{c.__name__}-mask-values") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c)(ids(), token_type_ids=torch.zeros(2, 5, dtype=torch.long)), ValueError, r"token_type_ids must have shape \(2, 6\)", id=f"{c.__name__}-types-shape") for c in TEXT_HEADS],
    *[pytest.param(lambda c=c: model(c, use_position_embeddings=True)(ids(), position_ids=torch.zeros(6, dtype=torch.long) - 1), ValueError, r"position_ids must be in \[0, 16\)", id=f"{c.__name__}-pos-neg") for c in TEXT_HEADS],
    pytest.param(lambda: load_with_config(chunk_size=0), ValueError, r"HydraConfig.chunk_size must be a positive integer", id="load-config-chunk0"),
    pytest.param(lambda: load_with_config(HydraModel, matrix_mixer_type="hydar"), ValueError, r"did you mean 'hydra'", id="load-config-mixer-typo"),
    pytest.param(lambda: load_with_config(hidden_act="gelux"), ValueError, r"hidden_act", id="load-config-act"),
    pytest.param(lambda: load_with_config(HydraModel, hidden_size=24), RuntimeError, r"ignore_mismatched_sizes", id="load-model-foreign-width"),
    pytest.param(lambda: load_with_config(text="{not json"), OSError, r"config.json|JSON", id="load-config-garbage"),
    pytest.param(lambda: load_vandermonde_dft(0.0), None, "", id="load-vandermonde-dft"),
    pytest.param(lambda: load_vandermonde_dft(0.5), ValueError, r"dft_matrix differs from the cosine DFT of size 16", id="load-vandermonde-dft-corrupted"),
    pytest.param(lambda: load_with_weights(b"garbage"), OSError, r"the safetensors weights in .* are not readable", id="load-weights-garbage"),
    pytest.param(check_zero_types_without_type_embeddings, None, "", id="model-zero-types-no-type-embeddings"),
    pytest.param(lambda: model(HydraModel)(ids(), position_ids=torch.arange(6)), ValueError, r"position_ids were given but the model has no position embeddings", id="model-pos-without-embeddings"),
    pytest.param(lambda: model(HydraModel, use_position_embeddings=True)(ids(), position_ids=torch.arange(5)), ValueError, r"position_ids must have shape \(6,\), \(1, 6\) or \(2, 6\), got \(5,\)", id="model-pos-shape"),
    pytest.param(lambda: expect(model(HydraModel, use_position_embeddings=True)(ids(), position_ids=torch.arange(6)[None]).last_hidden_state.isfinite().all()), None, "", id="model-pos-one-row"),
    pytest.param(lambda: model(HydraModel, use_position_embeddings=True)(ids(), position_ids=torch.zeros(3, 6, dtype=torch.long)), ValueError, r"position_ids must have shape", id="model-pos-batch"),
    pytest.param(lambda: model(HydraModel, use_position_embeddings=True)(ids(), position_ids=torch.arange(6.0)), ValueError, r"position_ids must be an integer tensor", id="model-pos-float"),
    pytest.param(lambda: model(HydraModel)(ids(), token_type_ids=torch.zeros(2, 6)), ValueError, r"token_type_ids must be an integer tensor", id="model-types-float"),
    pytest.param(lambda: model(HydraModel)(ids(), attention_mask=[[1] * 6] * 2), ValueError, r"attention_mask must be a torch.Tensor", id="model-mask-list"),
    pytest.param(lambda: model(HydraModel)(inputs_embeds=with_bad(x(), 0, float("nan"))), ValueError, r"inputs_embeds contains NaN", id="model-embeds-nan"),
    pytest.param(lambda: model(HydraModel)(inputs_embeds=x(l=0)), ValueError, r"inputs_embeds must have at least one position", id="model-embeds-L0"),
    pytest.param(lambda: expect(model(HydraForMaskedLM)(ids().to(torch.uint8), labels=ids().int()).loss.isfinite()), None, "", id="model-small-int-dtypes"),
    pytest.param(lambda: expect(model(HydraForSequenceClassification)(ids(), labels=torch.tensor([0, 1], dtype=torch.int32)).loss.isfinite()), None, "", id="seqcls-int32-labels"),
    pytest.param(lambda: model(HydraModel)(ids(), token_type_ids=torch.zeros(2, 6, dtype=torch.uint8)).last_hidden_state, None, "", id="model-uint8-types"),
    pytest.param(lambda: model(HydraModel)(ids().bool()), ValueError, r"input_ids must be an integer tensor, got torch.bool", id="model-ids-bool"),
    pytest.param(lambda: model(HydraModel)(inputs_embeds=x(dtype=torch.float64)), ValueError, r"inputs_embeds has dtype torch.float64 but the layer's parameters are torch.float32", id="model-embeds-dtype"),
    pytest.param(lambda: model(HydraModel)(ids().tolist()), ValueError, r"input_ids must be a torch.Tensor", id="model-ids-list"),
    pytest.param(lambda: model(HydraForSequenceClassification, problem_type="multi_label_classification")(ids(), labels=torch.tensor([[0.0, 1.0, 0.0]])), ValueError, r"labels must have shape \(2, 3\)", id="seqcls-multilabel-shape"),
    pytest.param(check_seqcls_loss_matches_cross_entropy, None, "", id="seqcls-loss-mean"),
    pytest.param(check_failed_call_keeps_problem_type, None, "", id="seqcls-failed-call-keeps-problem-type"),
    pytest.param(check_mlm_loss_matches_cross_entropy, None, "", id="mlm-loss-mean"),
    pytest.param(lambda: model(HydraModel, use_position_embeddings=True)(ids(l=20)), ValueError, r"max_position_embeddings=16", id="model-too-long"),
    pytest.param(lambda: model(HydraModel)(ids(), attention_mask=torch.ones(2, 6)) and check_float_mask_of_ones(), None, "", id="model-float-mask"),
    pytest.param(lambda: model(HydraForMaskedLM)(ids(), labels=torch.full((2, 6), VOCAB)), ValueError, r"labels must be in \[0, 40\) or -100 \(ignored\), got values in \[40, 40\]", id="mlm-labels-high"),
    pytest.param(lambda: model(HydraForMaskedLM)(ids(), labels=with_bad(with_bad(ids(), 0, -100), 3, VOCAB)), ValueError, r"labels must be in \[0, 40\) or -100 \(ignored\), got values in \[\d+, 40\]", id="mlm-labels-mixed"),
    pytest.param(lambda: model(HydraForMaskedLM)(ids(), labels=torch.full((2, 6), -5)), ValueError, r"labels must be in \[0, 40\) or -100", id="mlm-labels-neg"),
    pytest.param(lambda: model(HydraForMaskedLM)(ids(), labels=ids()[:, :5]), ValueError, r"labels must have shape \(2, 6\)", id="mlm-labels-shape"),
    pytest.param(lambda: model(HydraForMaskedLM)(ids(), labels=ids().float()), ValueError, r"labels must be an integer tensor", id="mlm-labels-float"),
    pytest.param(check_mlm_all_ignored, None, "", id="mlm-all-ignored"),
    pytest.param(check_tokcls_all_ignored, None, "", id="tokcls-all-ignored"),
    pytest.param(lambda: model(HydraForTokenClassification)(ids(), labels=torch.full((2, 6), 3)), ValueError, r"labels must be in \[0, 3\) or -100 \(ignored\), got values in \[3, 3\]", id="tokcls-labels-high"),
    pytest.param(lambda: model(HydraForTokenClassification)(ids(), labels=torch.zeros(2, 5, dtype=torch.long)), ValueError, r"labels must have shape \(2, 6\)", id="tokcls-labels-shape"),
    pytest.param(lambda: model(HydraForSequenceClassification)(ids(), labels=torch.tensor([0, 3])), ValueError, r"labels must be in \[0, 3\).*got values in \[0, 3\]", id="seqcls-labels-high"),
    pytest.param(lambda: model(HydraForSequenceClassification)(ids(), labels=torch.tensor([0, -1])), ValueError, r"labels must be in \[0, 3\)", id="seqcls-labels-neg"),
    pytest.param(lambda: model(HydraForSequenceClassification)(ids(), labels=torch.tensor([0, 1, 2])), ValueError, r"labels must be an integer tensor of shape \(2,\)", id="seqcls-labels-batch"),
    pytest.param(lambda: model(HydraForImageClassification)(torch.randn(2, 3, 8, 8), labels=torch.tensor([0, 7])), ValueError, r"labels must be in \[0, 3\)", id="img-labels-high"),
    pytest.param(lambda: model(HydraForImageClassification)(torch.randn(2, 1, 8, 8)), ValueError, r"pixel_values must have shape \(batch, 3, H, W\)", id="img-channels"),
    pytest.param(lambda: model(HydraForImageClassification)(torch.randn(2, 3, 12, 12)), ValueError, r"expected 8x8 images", id="img-size"),
    pytest.param(lambda: model(HydraForImageClassification)(), ValueError, r"pixel_values is required", id="img-none"),
    pytest.param(lambda: model(HydraForImageClassification)(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)), ValueError, r"pixel_values must be a floating-point tensor .* got torch.uint8", id="img-uint8"),
    pytest.param(lambda: expect(model(HydraForImageClassification)(torch.randn(2, 3, 8, 8, dtype=torch.float64)).logits.dtype == torch.float32), None, "", id="img-float64-pixels"),
]


def outcome(fn, exc, pattern) -> tuple[str, str]:
    """('clear' | 'cryptic' | 'silent' | 'correct', detail)."""
    try:
        fn()
    except AssertionError as err:
        return ("silent" if exc is None else "cryptic"), f"AssertionError: {err}"
    except Exception as err:  # noqa: BLE001 - the catalogue classifies every failure
        detail = f"{type(err).__name__}: {str(err)[:300]}"
        if exc is not None and isinstance(err, exc) and re.search(pattern, str(err)):
            return "clear", detail
        return "cryptic", detail
    return ("correct", "") if exc is None else ("silent", "no error raised")


@pytest.mark.parametrize("fn, exc, pattern", CASES)
def test_catalogue(fn, exc, pattern):
    kind, detail = outcome(fn, exc, pattern)
    assert kind == ("correct" if exc is None else "clear"), f"{kind}: {detail}"


if __name__ == "__main__":
    import collections

    counts = collections.Counter()
    for p in CASES:
        fn, exc, pattern = p.values
        kind, detail = outcome(fn, exc, pattern)
        counts[kind] += 1
        if kind not in ("clear", "correct"):
            print(f"{kind:8s} {p.id}: {detail}")
    print(dict(counts), "total", sum(counts.values()))


# ---------------------------------------------------------------------------- accepted inputs, in depth
LAYERS = {"hydra": hydra, "mha": mha, **{n: functools.partial(mm, n) for n in MM_TYPES}}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_empty_batch_gives_empty_output_and_backward_runs(name):
    layer = LAYERS[name]()
    u = x(b=0).requires_grad_()
    out = layer(u)
    assert out.shape == (0, 6, D) and out.dtype == u.dtype
    out.sum().backward()  # nothing to learn from, but a training step must not crash
    assert all(p.grad is None or not p.grad.any() for p in layer.parameters())
    if hasattr(layer, "materialize"):
        assert layer.materialize(x(b=0)).shape[0] == 0


@pytest.mark.parametrize("cls", [HydraForMaskedLM, HydraForTokenClassification], ids=lambda c: c.__name__)
def test_all_ignored_labels_give_zero_loss_and_zero_gradients(cls):
    torch.manual_seed(0)
    m = cls(cfg()).train()
    out = m(ids(), labels=torch.full((2, 6), -100))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(not g.any() for g in grads)


def test_partly_ignored_labels_loss_is_the_mean_over_labelled_tokens():
    torch.manual_seed(0)
    m = HydraForTokenClassification(cfg()).eval()
    labels = torch.tensor([[0, 1, -100, 2, -100, -100], [-100] * 6])
    out = m(ids(), labels=labels)
    keep = labels != -100
    ref = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, ref)


def test_dft_matrix_saved_in_low_precision_still_loads():
    layer = mm("vandermonde", is_data_dependent=False)
    sd = layer.state_dict()
    sd["matrix_mixer.dft_matrix"] = sd["matrix_mixer.dft_matrix"].bfloat16()
    layer.load_state_dict(sd)


def test_config_passes_its_fields_only_to_mixers_that_take_them():
    from hydra_ssm.mixers import get_mixer_class
    from hydra_ssm.mixers.registry import accepted_options

    for name in ("hydra", "mha", "toeplitz", "dense"):
        c = cfg(matrix_mixer_type=name, is_data_dependent=False if name == "dense" else None)
        kwargs = c.mixer_kwargs(seq_len=16, layer_idx=0)
        assert set(kwargs) <= accepted_options(get_mixer_class(name)), name
    assert "d_state" in cfg().mixer_kwargs() and "num_heads" not in cfg().mixer_kwargs()
    assert cfg(matrix_mixer_type="mha").mixer_kwargs()["num_heads"] == 4
