"""``hydra-ssm bench`` (CPU table) and ``hydra-ssm bench-profile`` as a user runs them, at tiny sizes; the peer
column computes the same mixer as the fused scan, so its ratio compares like with like."""

import subprocess
import sys

import pytest
import torch

from paths import SRC

ENV = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}


def run_cli(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("length,chunk", [(1, 64), (100, 64), (300, 128), (129, 512)])
def test_peer_two_pass_is_the_fused_scan(length, chunk):
    pytest.importorskip("transformers")
    from hydra_ssm.bench.hydra import peer_two_pass
    from hydra_ssm.ops import quasiseparable_chunked

    gen = torch.Generator().manual_seed(length)
    b, h, p, g, n = 2, 4, 8, 2, 6
    x = torch.randn(b, length, h, p, generator=gen)
    dt_f, dt_b = torch.rand(2, b, length, h, generator=gen)
    dt_f[:, :3] = 0  # skipped positions too
    A = -torch.rand(h, generator=gen) - 0.1
    B_f, C_f, B_b, C_b = torch.randn(4, b, length, g, n, generator=gen)
    D = torch.randn(b, length, h, generator=gen)
    peer = peer_two_pass(x, dt_f, dt_b, A, B_f, C_f, B_b, C_b, D, chunk_size=chunk)
    ours = quasiseparable_chunked(x.double(), dt_f.double(), dt_b.double(), A.double(), B_f.double(), C_f.double(),
                                  B_b.double(), C_b.double(), D.double())
    assert peer.shape == ours.shape
    torch.testing.assert_close(peer.double(), ours, rtol=1e-4, atol=1e-4)


def table_rows(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_bench_prints_the_peer_column_with_its_chunk():
    pytest.importorskip("transformers")
    out = run_cli("bench", "--lengths", "192", "--hydra-only-lengths", "--d-model", "64", "--repeats", "1",
                  "--no-memory", "--threads", "1")
    (row,) = table_rows(out)
    assert row["L"] == "192"
    time_text, chunk = row["peer fwd+bwd (chunk)"].rsplit(" ", 1)
    assert time_text.endswith("ms") and chunk in ("(64)", "(128)", "(256)")  # 512 > L is not tried
    assert row["fused vs peer"].endswith("x") and float(row["fused vs peer"][:-1]) > 0


def test_bench_profile_shows_where_the_time_goes():
    out = run_cli("bench-profile", "--target", "layer", "--lengths", "64", "--d-model", "64", "--top", "5",
                  "--threads", "1")
    assert "### Hydra layer, d_model 64, L = 64" in out
    kinds = table_rows("| kind |" + out.split("\n| kind |", 1)[1])
    names = [k["kind"] for k in kinds]
    assert "matmul" in names and "outside operators (Python, dispatch)" in names and names[-1] == "**wall**"
    shares = [float(k["share of wall"].rstrip("%")) for k in kinds[:-1]]
    assert all(0 <= s <= 100 for s in shares) and 50 <= sum(shares) <= 101


def test_bench_profile_of_the_main_job_times_both_models():
    out = run_cli("bench-profile", "--target", "main-job", "--steps", "1", "--top", "3", "--threads", "1")
    speed = table_rows(out.split("### The main job", 1)[1])[:2]
    assert [r["mixer"] for r in speed] == ["hydra", "mha"]
    assert speed[0]["params"] == "773,040" and speed[1]["params"] == "773,038"  # the README's table
    assert all(float(r["tokens/s"].replace(",", "")) > 0 for r in speed)
    assert "#### hydra: one step" in out and "#### mha: one step" in out


def test_bench_profile_refuses_bad_options_in_one_line():
    r = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "bench-profile", "--lengths", "0"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2 and "--lengths must be positive" in r.stderr
