"""The package as pip builds it, not the source tree: a wheel and a non-editable ``pip install .``.

Both are installed with ``--no-deps --target`` into a temporary directory (no
network: the build uses the setuptools of this environment) and then used from
a fresh interpreter whose path puts that directory first, so every import
comes from the installed copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from paths import ROOT

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _pip(*args, cwd):
    r = subprocess.run([*PIP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _use_installed(target: Path, tmp_path: Path) -> None:
    """Import the installed copy, build and run a layer, and run the console script."""
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    code = (
        "import sys, torch, hydra_ssm\n"
        f"assert hydra_ssm.__file__.startswith({str(target)!r}), hydra_ssm.__file__\n"
        "from hydra_ssm import Hydra\n"
        "y = Hydra(d_model=16, d_state=4, headdim=8)(torch.randn(1, 5, 16))\n"
        "assert y.shape == (1, 5, 16)\n"
        "import hydra_ssm.train.tasks, hydra_ssm.train.batching, hydra_ssm.models, hydra_ssm.bench.hydra, hydra_ssm.plot\n"
        "print(hydra_ssm.__version__)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    script = target / "bin" / "hydra-ssm"
    assert script.is_file(), sorted(p.name for p in (target / "bin").iterdir())
    r = subprocess.run([sys.executable, str(script), "train", "--help"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "--train-file" in r.stdout, r.stderr[-3000:]


def test_wheel_builds_and_works(tmp_path):
    wheels = tmp_path / "wheels"
    _pip("wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), cwd=tmp_path)
    (wheel,) = wheels.glob("hydra_ssm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("hydra_ssm/ops/chunked.py", "hydra_ssm/models/modeling_hydra.py", "hydra_ssm/train/loop.py",
                   "hydra_ssm/bench/hydra.py", "hydra_ssm/cli.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    target = tmp_path / "site"
    _pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=tmp_path)
    _use_installed(target, tmp_path)


def test_pip_install_dot_works(tmp_path):
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target), ".", cwd=ROOT)
    _use_installed(target, tmp_path)
