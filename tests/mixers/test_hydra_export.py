"""The Hydra layer's export path: the loop-free scan equals the eager one, and torch.export holds for every length."""

import pytest
import torch
from torch.export import Dim

from hydra_ssm import Hydra
from hydra_ssm.mixers import hydra as hydra_module

TINY = dict(d_model=16, d_state=4, d_conv=3, headdim=8, expand=2, chunk_size=4)


def make(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = Hydra(**{**TINY, **kw}).to(dtype).eval()
    with torch.no_grad():  # away from the symmetric init, so that every term matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def padded_batch(b, l, dtype=torch.float32):
    u = torch.randn(b, l, 16, dtype=dtype)
    mask = torch.ones(b, l, dtype=torch.bool)
    if b > 1 and l > 2:
        mask[0, l // 2:] = False  # right padding
        mask[1, : l // 3] = False  # left padding
    return u, mask


@pytest.mark.parametrize("init_states", [False, True])
def test_minimal_scan_equals_fused_in_the_layer(init_states):
    fused = make(torch.float64, learnable_init_states=init_states)
    minimal = make(torch.float64, learnable_init_states=init_states, scan_impl="minimal")
    if init_states:
        with torch.no_grad():
            minimal.init_states.copy_(torch.randn_like(minimal.init_states))
            fused.init_states.copy_(minimal.init_states)
    for l in (1, 3, 4, 9):
        u, mask = padded_batch(2, l, torch.float64)
        for m in (None, mask):
            torch.testing.assert_close(minimal(u, m), fused(u, m), rtol=1e-10, atol=1e-10)


def test_eager_forward_keeps_the_fast_scan(monkeypatch):
    """Outside export the layer never runs the minimal scan (the default stays the fused one)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the minimal scan ran in eager mode")

    monkeypatch.setattr(hydra_module, "quasiseparable_minimal", refuse)
    make()(*padded_batch(2, 7))


@pytest.mark.parametrize("with_mask", [False, True])
def test_torch_export_dynamic_length_equals_eager(with_mask):
    m = make()
    u, mask = padded_batch(2, 11)
    dims = {0: Dim("batch"), 1: Dim("seqlen")}
    args, shapes = ((u, mask), (dims, dims)) if with_mask else ((u,), (dims,))
    program = torch.export.export(m, args, dynamic_shapes=shapes)
    for b, l in ((1, 1), (3, 4), (2, 5), (3, 23)):
        u, mask = padded_batch(b, l)
        args = (u, mask) if with_mask else (u,)
        torch.testing.assert_close(program.module()(*args), m(*args), rtol=1e-5, atol=1e-5)


def test_torch_export_classifier_without_mask():
    """The HF classifier exports on input_ids alone too (the mask-free graph), and runs at other lengths."""
    pytest.importorskip("transformers")
    from hydra_ssm.models import HydraConfig, HydraForSequenceClassification

    torch.manual_seed(0)
    config = HydraConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, d_state=4, headdim=8, chunk_size=4,
                         num_labels=2, initializer_range=0.5)
    model = HydraForSequenceClassification(config).eval()
    ids = torch.randint(1, 40, (2, 9))
    program = torch.export.export(model, (ids,), dynamic_shapes=({0: Dim("batch"), 1: Dim("seqlen")},))
    for b, l in ((1, 1), (3, 17)):
        ids = torch.randint(1, 40, (b, l))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_onnx_layer_in_onnxruntime(tmp_path):
    """The layer through the TorchScript-based ONNX exporter (seconds; the dynamo one, slower, is exercised on
    the whole classifier in tests/journeys/test_journey_export.py), run by onnxruntime at other batch sizes
    and lengths, padded."""
    ort = pytest.importorskip("onnxruntime")
    m = make()
    u, mask = padded_batch(2, 11)
    axes = {0: "batch", 1: "seqlen"}
    torch.onnx.export(m, (u, mask), str(tmp_path / "hydra.onnx"), dynamo=False, input_names=["u", "mask"],
                      output_names=["y"], dynamic_axes={"u": axes, "mask": axes})
    session = ort.InferenceSession(str(tmp_path / "hydra.onnx"), providers=["CPUExecutionProvider"])
    for b, l in ((1, 1), (3, 5), (3, 30)):
        u, mask = padded_batch(b, l)
        (y,) = session.run(None, {"u": u.numpy(), "mask": mask.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), m(u, mask), rtol=1e-4, atol=1e-4)
