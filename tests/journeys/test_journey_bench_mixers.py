"""``hydra-ssm bench-mixers``: a row per variant (a class with an option, the Hydra layer); bad options refused first."""

import subprocess
import sys

from paths import SRC


def test_bench_mixers_prints_a_row_per_variant_and_form():
    cmd = [sys.executable, "-m", "hydra_ssm.cli", "bench-mixers", "--types", "bi_deltanet:num_householder=2",
           "hydra", "--forms", "sam", "--lengths", "24", "--d-model", "16", "--headdim", "8", "--qk-dim", "4",
           "--warmup", "0", "--repeats", "1", "--threads", "1"]
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "ms / MB" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [["| bi_deltanet:num_householder=2", "SAM"], ["| hydra", "SAM"]], \
        r.stdout
    assert not any("error" in row for row in rows), r.stdout
    bad = subprocess.run(cmd[:5] + ["bi_deltanet:num_householdr=2"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 2 and "unknown option 'num_householdr'" in bad.stderr and "| " not in bad.stdout
