"""config.mixer_init: the mixers' Linear layers get the model's normal init ("bert") or keep their own ("own")."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from hydra_ssm.models import HydraConfig, HydraForSequenceClassification  # noqa: E402


def _model(init, mixer="hydra"):
    torch.manual_seed(0)
    return HydraForSequenceClassification(HydraConfig(
        vocab_size=50, hidden_size=64, num_hidden_layers=2, intermediate_size=32, headdim=16, d_state=8,
        matrix_mixer_type=mixer, num_attention_heads=4, mixer_init=init))


@pytest.mark.parametrize("mixer", ["hydra", "mha"])
def test_own_init_keeps_the_mixers_projections_and_nothing_else(mixer):
    bert, own = _model("bert", mixer), _model("own", mixer)
    seen = 0
    for (name, p), (_, q) in zip(bert.named_parameters(), own.named_parameters()):
        if p.dim() != 2 or "embeddings" in name:
            continue
        if ".mixer." in name:  # PyTorch's default: uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)
            seen += 1
            assert p.std().item() == pytest.approx(0.02, rel=0.15), name
            assert q.std().item() == pytest.approx(1 / math.sqrt(3 * q.shape[1]), rel=0.15), name
        else:  # MLPs, pooler, classifier: the normal init either way
            assert q.std().item() == pytest.approx(0.02, rel=0.2), name
    assert seen >= 4


def test_mixer_init_is_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="HydraConfig.mixer_init"):
        HydraConfig(mixer_init="xavier")
    model = _model("own")
    model.save_pretrained(tmp_path)
    back = HydraForSequenceClassification.from_pretrained(tmp_path)
    assert back.config.mixer_init == "own"
    for (name, p), (_, q) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(p, q), name  # loading never re-initialises
