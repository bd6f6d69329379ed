"""Journey: ``import hydra_ssm`` is the only import a user needs, and transformers stays optional.

- With transformers installed, a new Python process that runs ``import hydra_ssm``
  and nothing else of ours loads saved models through transformers' own Auto
  classes: ``AutoModelForMaskedLM`` gives back the saved masked-LM (same logits),
  ``AutoModel`` on an image model's directory gives the image encoder.
- Without transformers (its import made to fail), ``import hydra_ssm`` still
  works and imports nothing outside the standard library but torch and einops;
  ``import hydra_ssm.models`` fails with the install hint.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from paths import SRC  # noqa: E402
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def _python(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


FRESH_LOAD = r"""
import json, sys
import torch
import hydra_ssm
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForMaskedLM

text_dir, image_dir, ids_path = sys.argv[1:]
mlm = AutoModelForMaskedLM.from_pretrained(text_dir).eval()
with torch.no_grad():
    logits = mlm(torch.load(ids_path)).logits
torch.save(logits, ids_path + ".out")
encoder = AutoModel.from_pretrained(image_dir)
print(json.dumps({"mlm": type(mlm).__name__, "image_auto_model": type(encoder).__name__,
                  "image_config": type(AutoConfig.from_pretrained(image_dir)).__name__,
                  "image_classifier": type(AutoModelForImageClassification.from_pretrained(image_dir)).__name__,
                  "ours": sorted(m for m in sys.modules if m.split(".")[0] == "hydra_ssm")}))
"""


def test_fresh_process_loads_saved_models_after_import_hydra_ssm_alone(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from hydra_ssm.models import HydraConfig, HydraForImageClassification, HydraForMaskedLM, HydraVisionConfig

    torch.manual_seed(0)
    mlm = HydraForMaskedLM(HydraConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, headdim=16, d_state=8,
                                       chunk_size=8, max_position_embeddings=16)).eval()
    mlm.save_pretrained(tmp_path / "text")
    image = HydraForImageClassification(HydraVisionConfig(hidden_size=32, num_hidden_layers=1, headdim=16, d_state=8,
                                                          image_size=8, patch_size=4, num_channels=1, num_labels=3))
    image.save_pretrained(tmp_path / "image")
    ids = torch.randint(1, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")

    out = _python(FRESH_LOAD, str(tmp_path / "text"), str(tmp_path / "image"), str(tmp_path / "ids.pt"))
    assert out["mlm"] == "HydraForMaskedLM"
    assert out["image_auto_model"] == "HydraVisionModel" and out["image_config"] == "HydraVisionConfig"
    assert out["image_classifier"] == "HydraForImageClassification"
    assert "hydra_ssm.models" in out["ours"]  # imported by `import hydra_ssm`, not by the user
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "ids.pt.out"), mlm(ids).logits)


def without(module: str) -> str:
    """Code that makes ``import module`` (and its submodules) fail in the interpreter that runs it, as if the
    module were not installed: a meta-path finder placed first."""
    return f"""
import sys

class Without:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module + "."!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None

sys.meta_path.insert(0, Without())
"""


WITHOUT_TRANSFORMERS = without("transformers") + r"""
import json, sys

import torch, einops
before = set(sys.modules)
import hydra_ssm
new = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
y = hydra_ssm.Hydra(d_model=16, headdim=8, d_state=4, chunk_size=4)(torch.randn(1, 5, 16))
try:
    import hydra_ssm.models
    hint = None
except ImportError as err:
    hint = str(err)
print(json.dumps({"new_packages": sorted(new), "shape": list(y.shape), "hint": hint,
                  "transformers_loaded": "transformers" in sys.modules}))
"""


def test_import_hydra_ssm_without_transformers_needs_only_torch_and_einops():
    out = _python(WITHOUT_TRANSFORMERS)
    assert out["new_packages"] == ["hydra_ssm"], out  # nothing but our own package beyond torch, einops, stdlib
    assert out["shape"] == [1, 5, 16]
    assert not out["transformers_loaded"]
    assert out["hint"] is not None and "hydra-ssm[hf]" in out["hint"]


OLD_TRANSFORMERS = without("transformers.image_processing_backends") + r"""
import json, sys, warnings

import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import hydra_ssm
y = hydra_ssm.Hydra(d_model=16, headdim=8, d_state=4, chunk_size=4)(torch.randn(1, 5, 16))
print(json.dumps({"shape": list(y.shape), "warnings": [str(w.message) for w in caught
                                                       if "hydra_ssm.models" in str(w.message)]}))
"""


def test_import_hydra_ssm_with_an_older_transformers_keeps_the_core():
    out = _python(OLD_TRANSFORMERS)
    assert out["shape"] == [1, 5, 16]
    assert len(out["warnings"]) == 1 and "not registered with transformers" in out["warnings"][0], out
    assert "image_processing_backends" in out["warnings"][0] and "hydra-ssm[hf]" in out["warnings"][0]


WITHOUT_PILLOW = without("PIL") + r"""
import json, sys

import numpy as np
import hydra_ssm
from hydra_ssm.models import HydraImageProcessor
proc = HydraImageProcessor(num_channels=1, size={"height": 4, "width": 4}, rescale_factor=0.5, image_mean=1.0, image_std=2.0)
out = proc([np.full((4, 4), 6, np.uint8), np.full((8, 8), 6, np.uint8)], return_tensors="np")["pixel_values"]
print(json.dumps({"shape": list(out.shape), "values": sorted({round(float(v), 6) for v in out.ravel()})}))
"""


def test_import_hydra_ssm_and_array_images_without_pillow():
    """The hf extra has no Pillow: registration and the image processor on arrays must not need it."""
    pytest.importorskip("transformers")
    out = _python(WITHOUT_PILLOW)
    assert out == {"shape": [2, 1, 4, 4], "values": [1.0]}  # (6 * 0.5 - 1) / 2
