"""Journey: train an image classifier with the CLI, then classify images with transformers' pipeline.

A user runs ``hydra-ssm train --task image`` (the default scikit-learn digits),
then, in a new Python process with only ``import hydra_ssm`` and transformers,
``pipeline("image-classification", model=RUN/image/hydra/model)`` on PIL images
(and numpy arrays) of the validation digits. The pipeline must predict what the
CLI's model predicts on its own (normalised) validation tensors, its accuracy
must be ``hydra-ssm evaluate``'s on the same rows, and its labels the names.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from paths import SRC  # noqa: E402
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
TRAIN = ["--task", "image", "--mixers", "hydra", "--hidden-size", "32", "--num-layers", "1", "--headdim", "16",
         "--d-state", "8", "--patch-size", "2", "--steps", "40", "--batch-size", "32", "--lr", "3e-3",
         "--eval-batches", "0", "--checkpoint-every", "20", "--threads", "1", "--progress", "false", "--plot", "false"]

PIPELINE = r"""
import json, sys
import numpy as np
from PIL import Image
import hydra_ssm
from transformers import pipeline

raw = np.load(sys.argv[1])                       # (N, 8, 8) uint8, digit pixels 0..16
clf = pipeline("image-classification", model=sys.argv[2])
pil = clf([Image.fromarray(a) for a in raw], top_k=1)
arrays = clf([a for a in raw[:16]], top_k=1)     # (H, W) numpy arrays
print(json.dumps({"pil": [o[0]["label"] for o in pil], "arrays": [o[0]["label"] for o in arrays],
                  "modules": sorted(m for m in sys.modules if m.startswith("hydra_ssm"))}))
"""


def _cli(*argv):
    r = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", *argv], capture_output=True, text=True, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_cli_image_model_through_pipeline(tmp_path):
    from sklearn.datasets import load_digits

    from hydra_ssm.models import HydraForImageClassification
    from hydra_ssm.train.config import build_config
    from hydra_ssm.train.tasks import image_data, split_images

    run = tmp_path / "run"
    _cli("train", *TRAIN, "--output-dir", str(run))
    model_dir = run / "image" / "hydra" / "model"
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model_type"] == "hydra_vision"
    assert saved["id2label"] == {str(i): str(i) for i in range(10)}
    processor = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "HydraImageProcessor" and processor["rescale_factor"] == 1 / 16
    ckpt = run / "image" / "hydra" / "checkpoints"
    step = (ckpt / "latest").read_text().strip()
    assert json.loads((ckpt / step / "preprocessor_config.json").read_text()) == processor

    # the CLI's own view of the validation rows: its normalised tensors through its saved model
    cfg = build_config({}, {"task": "image", "patch_size": 2})
    val = image_data(cfg).val
    model = HydraForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        cli_pred = model(val["pixel_values"]).logits.argmax(-1).tolist()
    labels = val["labels"].tolist()

    # the same rows as a user has them: raw digit pixels (0..16) as 8-bit images
    digits = load_digits()
    _, _, raw_val, y_val = split_images(digits.images, digits.target, 0.2)
    assert y_val.tolist() == labels
    np.save(tmp_path / "val.npy", raw_val.astype(np.uint8))
    r = subprocess.run([sys.executable, "-c", PIPELINE, str(tmp_path / "val.npy"), str(model_dir)],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "hydra_ssm.models" in out["modules"]  # registered by `import hydra_ssm` alone

    assert set(out["pil"]) <= {str(i) for i in range(10)}  # names, not LABEL_n
    pipe_pred = [int(name) for name in out["pil"]]
    assert pipe_pred == cli_pred
    assert len(set(pipe_pred)) > 2  # a trained model, not a constant one
    assert out["arrays"] == out["pil"][:16]

    ev = json.loads(_cli("evaluate", "--model", str(model_dir)))
    correct = sum(p == y for p, y in zip(pipe_pred, labels))
    assert ev["eval_targets"] == len(labels)
    assert ev["eval_accuracy"] == correct / len(labels)
    assert ev["eval_accuracy"] > 0.3, ev  # chance is 0.1
