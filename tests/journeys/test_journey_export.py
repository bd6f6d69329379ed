"""Journey: deploy a saved classifier with torch.export and ONNX, run it in onnxruntime.

A tiny HydraForSequenceClassification is saved with ``save_pretrained``. A fresh interpreter loads it with
transformers' ``AutoModelForSequenceClassification`` (after ``import hydra_ssm.models``), exports it

* with ``torch.export.export`` (dynamic batch and sequence length),
* to ONNX with the dynamo exporter (from that exported program) and with the TorchScript-based one,

and runs each at batch sizes and lengths other than the exported ones, with left and right padding in the
attention mask. Every result must match the eager model to 1e-4 (the errors are printed for the record).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from paths import SRC  # noqa: E402

DEPLOY = r'''
import json, sys
import numpy as np
import onnxruntime as ort
import torch
from torch.export import Dim
from transformers import AutoModelForSequenceClassification

import hydra_ssm.models  # noqa: F401  (registers the model type with the Auto classes)

model_dir, out_dir = sys.argv[1], sys.argv[2]
model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

# Export at one shape: batch 2, length 11, right padding in the second row.
ids = torch.randint(1, 60, (2, 11), generator=torch.Generator().manual_seed(0))
mask = torch.ones(2, 11, dtype=torch.long)
mask[1, 8:] = 0
batch, seqlen = Dim("batch"), Dim("seqlen")
program = torch.export.export(model, (ids, mask), dynamic_shapes=({0: batch, 1: seqlen}, {0: batch, 1: seqlen}))
torch.onnx.export(program, input_names=["input_ids", "attention_mask"], output_names=["logits"]).save(
    out_dir + "/dynamo.onnx")
torch.onnx.export(model, (ids, mask), out_dir + "/torchscript.onnx", dynamo=False,
                  input_names=["input_ids", "attention_mask"], output_names=["logits"],
                  dynamic_axes={"input_ids": {0: "batch", 1: "seqlen"}, "attention_mask": {0: "batch", 1: "seqlen"}})
sessions = {name: ort.InferenceSession(f"{out_dir}/{name}.onnx", providers=["CPUExecutionProvider"])
            for name in ("dynamo", "torchscript")}

# Run at other shapes: lengths 1, 5 (shorter than a chunk), 23, 40; left and right padding; no padding.
gen = torch.Generator().manual_seed(1)
errors = {"torch.export": 0.0, "dynamo": 0.0, "torchscript": 0.0}
logits_scale = 0.0
for b, l in ((1, 1), (3, 5), (2, 23), (4, 40)):
    ids = torch.randint(1, 60, (b, l), generator=gen)
    mask = torch.ones(b, l, dtype=torch.long)
    if b > 1:
        mask[0, l // 2:] = 0  # right padding
        mask[1, : l // 3] = 0  # left padding
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = program.module()(ids, mask).logits
    errors["torch.export"] = max(errors["torch.export"], float((got - want).abs().max()))
    logits_scale = max(logits_scale, float(want.abs().max()))
    for name, session in sessions.items():
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        errors[name] = max(errors[name], float(np.abs(got - want.numpy()).max()))
print(json.dumps({"errors": errors, "logits_scale": logits_scale}))
'''


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    from hydra_ssm.models import HydraConfig, HydraForSequenceClassification

    torch.manual_seed(0)
    config = HydraConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, d_state=8, headdim=16, chunk_size=8,
                         num_labels=3, initializer_range=0.5)  # a wide init: logits of order 1, not 1e-2
    model = HydraForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(path)
    return path


def test_export_then_onnxruntime(saved_classifier, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DEPLOY, str(saved_classifier), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("max abs error vs eager:", result)
    assert result["logits_scale"] > 0.1  # the comparison is not between near-zero numbers
    for path, error in result["errors"].items():
        assert error <= 1e-4, (path, error)
