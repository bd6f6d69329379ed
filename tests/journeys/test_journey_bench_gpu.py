"""``hydra-ssm bench --device cuda``: what can be checked without a GPU. The useful-FLOP count against the
matmuls of the chunked algorithm done by hand, the table's cells from known times, and the one-line refusal
when no CUDA device is there."""

import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from hydra_ssm.bench.hydra import GPU_ROWS, attention_flops, gpu_table, hydra_scan_flops
from paths import SRC


def chunked_algorithm_matmul_flops(batch, length, heads, headdim, dstate, chunk):
    """FLOPs that torch counts for the matmuls of one forward of the chunked algorithm, run on random
    operands per chunk (the last one shorter): per direction C B^T, B^T x (the state handed on) and
    C H (the entering state read out), and once the block times x."""
    with FlopCounterMode(display=False) as counter:
        for start in range(0, length, chunk):
            q = min(chunk, length - start)
            x = torch.randn(batch, heads, q, headdim)
            block = torch.zeros(batch, heads, q, q)
            for _direction in ("forward", "backward"):
                B, C = torch.randn(batch, heads, q, dstate), torch.randn(batch, heads, q, dstate)
                block = block + C @ B.transpose(-1, -2)
                state = B.transpose(-1, -2) @ x  # (N, P) handed on
                C @ state  # the entering state read out
            block @ x
    return counter.get_total_flops()


def test_hydra_scan_flops_counts_the_chunked_matmuls():
    # one full chunk of 64 and a last chunk of 36: per chunk 4 q^2 N + 2 q^2 P + 8 q N P, times B H = 6
    assert hydra_scan_flops(2, 100, 3, 4, 5, 64, backward=False) == 6 * (124928 + 42048) == 1001856
    assert hydra_scan_flops(2, 100, 3, 4, 5, 64, backward=True) == 3 * 1001856
    for shape in [(2, 100, 3, 4, 5, 64), (1, 128, 2, 8, 16, 32), (1, 7, 1, 3, 2, 64)]:
        assert hydra_scan_flops(*shape, backward=False) == chunked_algorithm_matmul_flops(*shape), shape
    assert hydra_scan_flops(3, 0, 2, 4, 4, 64, backward=True) == 0
    assert attention_flops(2, 10, 3, 4, backward=False) == 4 * 2 * 3 * 100 * 4
    assert attention_flops(2, 10, 3, 4, backward=True) == 7 * (4 * 2 * 3 * 100 * 4) // 2  # 3.5x


def test_gpu_table_cells_come_from_the_measured_times():
    results = [
        {"L": 1024, "row": "triton", "fwd": 0.001, "fwdbwd": 0.004, "peak": 3 * 2**20, "fwd_tflops": 50.0,
         "fwdbwd_tflops": 37.5},
        {"L": 1024, "row": "eager", "fwd": 0.002, "fwdbwd": 0.010, "fwd_tflops": 25.0, "fwdbwd_tflops": 15.0},
        {"L": 1024, "row": "mamba", "status": "not installed (mamba_ssm)"},
        {"L": 2048, "row": "triton", "status": "OOM"},
        {"L": 2048, "row": "sdpa", "fwd": 0.5, "fwdbwd": 1.5, "fwd_tflops": 1.0, "fwdbwd_tflops": 2.5},
        {"L": 2048, "row": "eager", "fwd": 0.25, "fwd_tflops": 2.0, "status": "OOM"},
    ]
    lines = gpu_table(results, matmul_tflops=150.0).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0] == ["1k", "triton", "1.000", "4.000", "3 MB", "50.0", "37.5", "25%", "1.00x", "1.00x"]
    assert cells[1] == ["1k", "torch eager", "2.000", "10.00", "—", "25.0", "15.0", "10%", "2.00x", "2.50x"]
    assert cells[2] == ["1k", "mamba_ssm two-pass", "not installed (mamba_ssm)"] + ["—"] * 7
    assert cells[3] == ["2k", "triton", "OOM"] + ["—"] * 7
    # no triton time at 2k: no ratio
    assert cells[4] == ["2k", "sdpa", "500.00", "1500.00", "—", "1.00", "2.50", "2%", "—", "—"]
    # the forward ran, the forward+backward ran out of memory
    assert cells[5] == ["2k", "torch eager", "250.00", "OOM", "—", "2.00", "—", "—", "—", "—"]
    assert set(GPU_ROWS) == {"triton", "eager", "compile", "mamba", "fla", "sdpa"}


def test_cuda_table_without_cuda_is_refused_in_one_line():
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    for args, expected in ((["--device", "cuda"], "--device cuda: no CUDA device"),
                           (["--device", "cpu", "--dtype", "float32"], "--dtype does not apply to --device cpu")):
        r = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "bench", *args], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("hydra-ssm: error: ") and expected in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == "", (r.stdout, r.stderr)
