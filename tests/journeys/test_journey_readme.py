"""Every code block of the README runs as a user would run it.

Python blocks run one by one, each in a fresh interpreter in an empty working
directory (so a block cannot lean on state left by another, and whatever it
writes lands in a temporary directory). Shell blocks are the set-up and test
commands: CI runs them itself (``.ci/run``), so here they are checked to be
the commands CI runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from paths import ROOT

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks(lang: str) -> list[tuple[str, str]]:
    """(id, code) of every fenced block in the README whose info string is ``lang``; the id names its section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        if match.group(1) != lang:
            continue
        heading = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)
        section = re.sub(r"\W+", "-", heading[-1].lower()).strip("-") if heading else "top"
        out.append((f"{section}-{sum(1 for i, _ in out if i.startswith(section))}", match.group(2)))
    return out


PYTHON_BLOCKS = readme_blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 4, [i for i, _ in PYTHON_BLOCKS]


@pytest.mark.parametrize("code", [c for _, c in PYTHON_BLOCKS], ids=[i for i, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs(code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"


def test_readme_setup_commands_are_what_ci_runs():
    """The second set-up command is the whole test set-up: CI runs its installs and its test command."""
    setups = [c.strip() for _, c in readme_blocks("bash") if "pip install" in c]
    assert len(setups) == 2, setups
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [s.strip() for s in setups[1].split("&&")]
    installs = [s for s in steps if s.startswith("pip install")]
    assert installs == ["pip install torch==2.13.0", 'pip install -e ".[test]"'], installs
    for step in installs + [steps[-1]]:
        assert step.replace("pip install", "pip install --quiet") in ci or step in ci, step
    assert steps[-1] == "python -m pytest -q"
    assert setups[0].split("&&")[-1].strip() == "hydra-ssm train"
