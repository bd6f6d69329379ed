"""A user trains a masked LM with each sequence split over 2 processes: ``torchrun --nproc_per_node 2
hydra-ssm train --context-parallel 2`` follows the single-process run's training and validation losses,
writes checkpoints that resume exactly, and bad combinations stop with one line before training."""

import os

import pytest

pytest.importorskip("transformers")

from hydra_ssm.bench.context_parallel import launch_gloo  # noqa: E402
from hydra_ssm.cli import main  # noqa: E402

from tiny_runs import assert_same_curves, run_losses, torchrun_cli, write_split_book  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_split_book(tmp_path_factory.mktemp("corpus"), 30_000, 8_000, tokenizer_vocab=300)


def args(corpus, out, steps, extra=()):
    return ["train", "--train-file", str(corpus / "train.txt"), "--validation-file", str(corpus / "val.txt"),
            "--tokenizer-from", str(corpus / "tok"), "--seq-len", "32", "--batch-size", "4", "--steps", str(steps),
            "--mixers", "hydra", "--hidden-size", "32", "--num-layers", "2", "--d-state", "8", "--headdim", "16",
            "--position-embeddings", "on", "--threads", "1", "--eval-every", "3", "--eval-batches", "2",
            "--checkpoint-every", "3", "--lr", "5e-3", "--warmup-steps", "1", "--progress", "false", "--plot", "false",
            "--output-dir", str(out), *extra]


def test_two_processes_split_each_sequence_and_follow_the_single_process_run(corpus, tmp_path):
    single = tmp_path / "single"
    assert main(args(corpus, single, 6)) == 0
    split = tmp_path / "split"
    r = torchrun_cli(2, args(corpus, split, 6, ["--context-parallel", "2"]))
    assert r.returncode == 0, r.stderr[-3000:]
    b_train, _ = assert_same_curves(single / "mlm" / "hydra", split / "mlm" / "hydra", 6, 2, 1e-5)

    # the saved model is an ordinary one: the same weights as the single-process run's, to float rounding
    from safetensors.torch import load_file
    wa = load_file(str(single / "mlm" / "hydra" / "model" / "model.safetensors"))
    wb = load_file(str(split / "mlm" / "hydra" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4

    # extended from its last checkpoint by 2 processes (started here, as torchrun would: quicker): the first
    # 6 steps stay, the next follow the single run
    assert main(args(corpus, single, 8, ["--resume"])) == 0
    assert launch_gloo(cli_rank, 2, args(corpus, split, 8, ["--context-parallel", "2", "--resume"]),
                       start_method="fork") == 0
    c_train, _ = run_losses(split / "mlm" / "hydra")
    d_train, _ = run_losses(single / "mlm" / "hydra")
    assert [s for s, _ in c_train] == list(range(1, 9)) and c_train[:6] == b_train
    for (s1, a), (s2, b) in zip(d_train, c_train):
        assert s1 == s2 and abs(a - b) <= 1e-5 * max(1.0, abs(a)), (s1, a, b)


@pytest.mark.parametrize("extra, message", [
    (["--context-parallel", "2"], "the number of processes (1) must be a multiple of it"),
    (["--context-parallel", "0"], "--context-parallel must be >= 1, got 0"),
    (["--context-parallel", "2", "--mixers", "hydra,mha"], "mixer 'mha' (MultiHeadAttention) cannot run context-parallel"),
    (["--context-parallel", "2", "--task", "synthetic", "--synthetic-task", "listops"],
     "--task synthetic --synthetic-task listops classifies whole sequences"),
])
def test_bad_combinations_stop_before_training(corpus, tmp_path, capsys, extra, message):
    assert main(args(corpus, tmp_path / "out", 2, extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hydra-ssm: error: ") and message in err and len(err.splitlines()) == 1, err


def cli_rank(group, argv):
    """``hydra-ssm ARGV`` as one rank of ``group`` (a process torchrun would have started)."""
    rank, world = group.rank(), group.size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    return main(argv)


def test_shards_shorter_than_the_halo_stop_on_every_rank(corpus, tmp_path, capfd):
    # --seq-len 6 over 2 ranks: shards of 3 positions, the layer hands 4 rows (d_conv 7) to each neighbour
    argv = args(corpus, tmp_path / "out", 2, ["--context-parallel", "2", "--seq-len", "6"])
    assert launch_gloo(cli_rank, 2, argv, start_method="fork") == 2
    err = capfd.readouterr().err
    assert err.count("hydra-ssm: error: --context-parallel 2: sequences of 6 positions make shards of 3") == 2, err


def test_bench_prints_memory_and_an_exchange_that_does_not_grow_with_length(capsys):
    argv = ["bench-context-parallel", "--worlds", "1", "2", "--lengths", "16", "64", "--per-rank", "0",
            "--d-model", "16", "--headdim", "8", "--d-state", "4", "--warmup", "0", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = {(int(r[0]), int(r[1])): [c.strip() for c in r] for r in rows}
    assert set(cells) == {(1, 16), (2, 16), (1, 64), (2, 64)}
    assert cells[1, 16][6:] == ["0", "0"]  # one process: nothing exchanged
    # two processes x (first and last 4 rows of 16, two (4 heads, P 8, N 4) states, two (4,) decays) float32
    # + 2 x 3 integers: at both lengths
    assert cells[2, 16][6:] == cells[2, 64][6:] == [f"{2 * 4 * (128 + 256 + 8) + 6 * 8:,}", f"{2 * 4 * (128 + 256 + 8):,}"]
    assert "share the cores" in out
