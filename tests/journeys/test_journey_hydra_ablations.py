"""Journey: train a Hydra ablation from the command line, reload it with transformers' AutoModel.

A user studying Hydra's design runs ``hydra-ssm train --task image --mixers hydra
--mixer-option shift=False --mixer-option per_token_diagonal=False``. The options
must reach the layers, be saved in the HF config, and come back when the saved
model is loaded with ``AutoModelForImageClassification``: same weights (no fc_D,
nothing missing), same logits as the checkpoint, the CLI's own validation loss.
"""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from hydra_ssm.cli import main  # noqa: E402

TRAIN = ["train", "--task", "image", "--mixers", "hydra", "--hidden-size", "16", "--num-layers", "1", "--headdim",
         "8", "--d-state", "4", "--patch-size", "2", "--steps", "2", "--batch-size", "8", "--eval-batches", "0",
         "--threads", "1", "--progress", "false", "--plot", "false"]
OPTIONS = {"shift": False, "per_token_diagonal": False}


def test_ablation_trains_saves_and_reloads_with_automodel(tmp_path):
    from transformers import AutoModelForImageClassification

    from hydra_ssm.models import HydraForImageClassification
    from hydra_ssm.train.config import build_config
    from hydra_ssm.train.tasks import image_data

    run = tmp_path / "run"
    argv = [*TRAIN, "--output-dir", str(run)]
    for key, value in OPTIONS.items():
        argv += ["--mixer-option", f"{key}={value}"]
    assert main(argv) == 0
    out = run / "image" / "hydra"
    assert json.loads((out / "model" / "config.json").read_text())["mixer_options"] == OPTIONS

    model, info = AutoModelForImageClassification.from_pretrained(out / "model", output_loading_info=True)
    assert isinstance(model, HydraForImageClassification)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    mixers = [m for m in model.modules() if type(m).__name__ == "Hydra"]
    assert mixers and all(not m.shift and m.fc_D is None and m.two_scans for m in mixers)
    step = (out / "checkpoints" / "latest").read_text().strip()
    checkpoint = AutoModelForImageClassification.from_pretrained(out / "checkpoints" / step)

    val = image_data(build_config({}, {"task": "image", "patch_size": 2})).val
    with torch.no_grad():
        logits = model.eval()(val["pixel_values"]).logits
        assert torch.equal(logits, checkpoint.eval()(val["pixel_values"]).logits)
        loss = torch.nn.functional.cross_entropy(logits, val["labels"]).item()
        assert loss == pytest.approx(json.loads((out / "result.json").read_text())["val_loss"], rel=1e-5)

        # the same weights in the shifted layer give other logits: the option is what the model runs
        shifted_config = model.config.__class__.from_dict({**model.config.to_dict(),
                                                           "mixer_options": {"per_token_diagonal": False}})
        shifted = HydraForImageClassification(shifted_config).eval()
        shifted.load_state_dict(model.state_dict())
        assert not torch.allclose(shifted(val["pixel_values"]).logits, logits)


def test_bad_ablation_option_is_a_usage_error(tmp_path, capsys):
    assert main([*TRAIN, "--output-dir", str(tmp_path / "run"), "--mixer-option", "combine=sum"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hydra-ssm: error:")]
    assert len(errors) == 1 and "combine must be one of ['add', 'concat'], got 'sum'" in errors[0], errors
