"""Journey: a saved Hydra encoder, loaded in a fresh process with AutoModel, embeds one long sequence in segments.

The hidden states go into a memory-mapped file (what a genome-length input needs); they equal the model's
ordinary forward, and the mean embedding equals the forward's mean over positions.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from hydra_ssm.models import HydraConfig, HydraModel  # noqa: E402

from paths import SRC  # noqa: E402


def test_saved_model_streams_a_long_sequence_in_a_fresh_process(tmp_path):
    config = HydraConfig(vocab_size=12, hidden_size=32, num_hidden_layers=2, d_state=8, headdim=16, chunk_size=16,
                         is_prenorm=True, intermediate_size=64, type_vocab_size=0, initializer_range=0.2)
    HydraModel(config).save_pretrained(tmp_path / "model")
    code = f"""
import json
import torch
import hydra_ssm
from transformers import AutoModel

model = AutoModel.from_pretrained({str(tmp_path / "model")!r})
ids = torch.randint(0, 12, (1, 5000), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
out = torch.from_file({str(tmp_path / "hidden.bin")!r}, shared=True, size=5000 * 32).view(1, 5000, 32)
hidden = model.stream_hidden_states(ids, 512, out=out)
mean = model.stream_mean_embedding(ids, 700)
with torch.no_grad():
    want = model(ids).last_hidden_state
print(json.dumps({{"type": type(model).__name__, "same_buffer": hidden is out,
                  "error": (out - want).abs().max().item(), "scale": want.abs().max().item(),
                  "mean_error": (mean - want.mean(1)).abs().max().item()}}))
"""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["type"] == "HydraModel" and got["same_buffer"]
    assert got["scale"] > 0.5 and got["error"] < 1e-5 * got["scale"], got
    assert got["mean_error"] < 1e-5 * got["scale"], got
    assert os.path.getsize(tmp_path / "hidden.bin") == 5000 * 32 * 4


def test_bench_stream_prints_a_table_with_the_difference_to_forward(capsys, tmp_path):
    from hydra_ssm.cli import main

    assert main(["bench-stream", "--lengths", "3000", "--segment-len", "1024", "--d-model", "32", "--d-state", "8",
                 "--headdim", "16", "--threads", "1", "--dir", str(tmp_path), "--output", str(tmp_path / "t.md")]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3000 ")]
    assert len(row) == 1, row
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[1] == "1024" and cells[2].endswith("MB") and "/" in cells[4], cells
    assert float(cells[5].split()[0]) < 1e-5, cells  # max abs difference to forward
    assert sorted(os.listdir(tmp_path)) == ["t.md"]  # the mapped input and output files are gone


def test_bench_stream_refuses_bad_options(capsys):
    from hydra_ssm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench-stream", "--segment-len", "0"])
    assert exit_.value.code == 2 and "--segment-len must be positive" in capsys.readouterr().err
