"""Image models: HydraVisionConfig and the Auto classes, the image processor, position-embedding interpolation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from hydra_ssm.models import (  # noqa: E402
    HydraConfig,
    HydraForImageClassification,
    HydraImageProcessor,
    HydraVisionConfig,
    HydraVisionModel,
)
from hydra_ssm.models.modeling_hydra import interpolate_pos_encoding  # noqa: E402


def vision_config(cls=HydraVisionConfig, **overrides):
    values = dict(hidden_size=32, num_hidden_layers=1, headdim=16, d_state=8, chunk_size=8, hidden_dropout_prob=0.0,
                  image_size=8, patch_size=2, num_channels=1, num_labels=3, use_position_embeddings=True,
                  is_prenorm=True)
    values.update(overrides)
    return cls(**values)


def perturbed(model):
    """The model with every parameter moved off its init, so no check passes by a zero or a constant."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


# ---------------------------------------------------------------------------- config and Auto classes
def test_vision_config_resolves_to_the_image_models(tmp_path):
    model = perturbed(HydraForImageClassification(vision_config()))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "hydra_vision"
    assert type(AutoConfig.from_pretrained(tmp_path)) is HydraVisionConfig
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is HydraVisionModel
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(encoder(x).pooler_output, model.hydra(x).pooler_output)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is HydraForImageClassification


def test_image_config_saved_as_model_type_hydra_still_loads(tmp_path):
    """Image models saved before "hydra_vision" existed carry model_type "hydra"; they load as image models."""
    model = perturbed(HydraForImageClassification(vision_config(HydraConfig)))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "hydra"
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is HydraVisionConfig and config.model_type == "hydra_vision" and config.image_size == 8
    assert type(HydraConfig.from_pretrained(tmp_path)) is HydraVisionConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is HydraVisionModel
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    # text configs are untouched
    text = HydraConfig(hidden_size=32, num_hidden_layers=1, headdim=16)
    text.save_pretrained(tmp_path / "text")
    assert type(AutoConfig.from_pretrained(tmp_path / "text")) is HydraConfig


# ---------------------------------------------------------------------------- position-embedding interpolation
def _keys_bicubic(table: torch.Tensor, height: int, width: int, a: float = -0.75) -> torch.Tensor:
    """Plain-loop reference: (g, g, D) -> (height, width, D), Keys' cubic convolution on pixel centres
    (source coordinate (i + 0.5) * g / height - 0.5), indices clamped to the grid."""
    g = table.shape[0]

    def weight(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    out = torch.zeros(height, width, table.shape[-1], dtype=torch.float64)
    for i in range(height):
        y = (i + 0.5) * g / height - 0.5
        for j in range(width):
            x = (j + 0.5) * g / width - 0.5
            for r in range(math.floor(y) - 1, math.floor(y) + 3):
                for c in range(math.floor(x) - 1, math.floor(x) + 3):
                    rr, cc = min(max(r, 0), g - 1), min(max(c, 0), g - 1)
                    out[i, j] += weight(y - r) * weight(x - c) * table[rr, cc]
    return out


@pytest.mark.parametrize("height, width", [(4, 4), (6, 6), (3, 5), (8, 2)])
def test_interpolate_pos_encoding_matches_a_plain_bicubic_loop(height, width):
    g, dim = 4, 3
    table = torch.randn(g, g, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = interpolate_pos_encoding(table.reshape(1, g * g, dim), height, width)
    assert got.shape == (1, height * width, dim) and got.dtype == torch.float64
    ref = _keys_bicubic(table, height, width).reshape(1, height * width, dim)  # row-major over the new grid
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_interpolate_pos_encoding_at_the_native_grid_is_the_identity():
    table = torch.randn(1, 16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(interpolate_pos_encoding(table, 4, 4), table, rtol=0, atol=1e-15)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_model_runs_at_other_sizes_and_equals_itself_at_the_native_size(pooling):
    torch.manual_seed(0)
    model = perturbed(HydraForImageClassification(vision_config(pooling=pooling)).double())
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        native = model(x).logits
        assert torch.equal(model(x, interpolate_pos_encoding=True).logits, native)
        # the interpolated table at the native grid, through the rest of the model, gives the same logits
        emb = model.hydra.embeddings
        n_cls = 1 if pooling == "cls" else 0
        table = emb.position_embeddings.detach().clone()
        forced = torch.cat([table[:, :n_cls], interpolate_pos_encoding(table[:, n_cls:], 4, 4)], dim=1)
        emb.position_embeddings.copy_(forced)
        torch.testing.assert_close(model(x).logits, native, rtol=0, atol=1e-12)
        emb.position_embeddings.copy_(table)
        for size in ((12, 12), (6, 10), (4, 4)):
            big = torch.randn(2, 1, *size, dtype=torch.float64)
            out = model(big, interpolate_pos_encoding=True)
            assert out.logits.shape == (2, 3) and torch.isfinite(out.logits).all()
            hidden = model.hydra(big, interpolate_pos_encoding=True).last_hidden_state
            assert hidden.shape[1] == (size[0] // 2) * (size[1] // 2) + n_cls
    if pooling == "cls":  # the class token's position is kept as trained
        pos = emb._position_embeddings(6, 5)
        assert torch.equal(pos[:, 0], emb.position_embeddings[:, 0]) and pos.shape[1] == 31


def test_interpolated_embeddings_backpropagate_to_the_table():
    model = HydraForImageClassification(vision_config())
    model(torch.randn(2, 1, 12, 12), labels=torch.tensor([0, 2]), interpolate_pos_encoding=True).loss.backward()
    grad = model.hydra.embeddings.position_embeddings.grad
    assert grad is not None and bool(grad[:, 1:].abs().sum(-1).gt(0).all())


def test_other_sizes_need_the_flag_and_whole_patches():
    model = HydraForImageClassification(vision_config())
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(torch.randn(1, 1, 12, 12))
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        model(torch.randn(1, 1, 9, 8), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 1, H, W\)"):
        model(torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------------------- image processor
def digits_processor(**overrides):
    values = dict(num_channels=1, size={"height": 8, "width": 8}, rescale_factor=1 / 16, image_mean=[0.3],
                  image_std=[0.4])
    values.update(overrides)
    return HydraImageProcessor(**values)


def test_processor_normalises_like_a_float64_reference():
    raw = np.random.default_rng(0).integers(0, 17, size=(3, 8, 8)).astype(np.uint8)
    out = digits_processor()(list(raw), return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 1, 8, 8) and out.dtype == torch.float32
    ref = (raw.astype(np.float64) / 16 - 0.3) / 0.4
    np.testing.assert_allclose(out[:, 0].numpy(), ref, rtol=0, atol=1e-6)


def test_processor_gives_the_same_pixels_for_every_input_form():
    raw = np.random.default_rng(1).integers(0, 17, size=(8, 8)).astype(np.uint8)
    proc = digits_processor()
    forms = [raw, raw[None], raw[:, :, None], raw.astype(np.float32), torch.from_numpy(raw),
             PIL_Image.fromarray(raw), PIL_Image.fromarray(raw).convert("RGB"), np.repeat(raw[:, :, None], 3, axis=2)]
    outs = [proc(form, return_tensors="pt")["pixel_values"] for form in forms]
    for form, out in zip(forms, outs):
        assert torch.equal(out, outs[0]), type(form)


def test_processor_channel_conversion():
    rgb = np.random.default_rng(2).integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    plain = dict(do_rescale=False, do_normalize=False, size={"height": 5, "width": 6})
    gray = HydraImageProcessor(num_channels=1, **plain)(rgb, return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_array_equal(gray, np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]))
    pil_gray = np.asarray(PIL_Image.fromarray(rgb).convert("L"), dtype=np.float64)
    assert np.abs(gray - pil_gray).max() <= 1  # PIL rounds in fixed point
    three = HydraImageProcessor(num_channels=3, **plain)(rgb[:, :, 0], return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(three, np.stack([rgb[:, :, 0]] * 3).astype(np.float32))
    rgba = np.concatenate([rgb, np.full((5, 6, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(HydraImageProcessor(num_channels=3, **plain)(rgba, return_tensors="np")["pixel_values"][0],
                                  np.moveaxis(rgb, 2, 0).astype(np.float32))


def test_processor_resizes_other_sizes_only():
    proc = digits_processor(do_rescale=False, do_normalize=False)
    same = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    np.testing.assert_array_equal(proc(same, return_tensors="np")["pixel_values"][0], same)
    flat = np.full((16, 12), 5.0, dtype=np.float32)  # a constant image stays constant at any size
    out = proc(flat, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(out, 5.0, rtol=0, atol=1e-5)


def test_processor_saves_next_to_the_model_and_loads_with_auto(tmp_path):
    proc = digits_processor()
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "HydraImageProcessor" and saved["num_channels"] == 1
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is HydraImageProcessor
    raw = np.random.default_rng(3).integers(0, 17, size=(2, 8, 8)).astype(np.uint8)
    assert torch.equal(loaded(list(raw), return_tensors="pt")["pixel_values"],
                       proc(list(raw), return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_channels=2), "num_channels must be 1 or 3"),
    (dict(num_channels=3, image_mean=[0.5], image_std=[0.5, 0.5, 0.5]), "image_mean needs one value, or one per channel"),
    (dict(num_channels=1, image_mean=[0.5], image_std=[0.0]), "image_std must be positive"),
    (dict(num_channels=1, image_mean=[0.5], image_std=[0.5], resample=4), "resample must be"),
])
def test_processor_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HydraImageProcessor(**kwargs)


def test_processor_refuses_images_it_cannot_convert():
    with pytest.raises(ValueError, match="cannot make 1 channel"):
        digits_processor()(np.zeros((2, 8, 8), np.uint8), input_data_format="channels_first")
