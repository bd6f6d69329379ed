"""Where the project's files are, for tests that start fresh interpreters or read the README."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]   # the repository
SRC = str(ROOT / "src")                      # put first on PYTHONPATH so subprocesses import this checkout
