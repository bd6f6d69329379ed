"""The hydra-ssm command line: help, config files, and one-line errors before any training."""

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest

pytest.importorskip("transformers")

from hydra_ssm.cli import build_parser, main  # noqa: E402
from hydra_ssm.train.config import TrainConfig, build_config, load_config_file  # noqa: E402

from paths import SRC  # noqa: E402


def test_help_documents_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "mixer_options":  # given once per option
            flag = "--mixer-option KEY=VALUE"
        assert flag in text, flag
    assert "--config" in text


def test_console_entry_help_runs():
    r = subprocess.run([sys.executable, "-m", "hydra_ssm.cli", "train", "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC), timeout=120)
    assert r.returncode == 0 and "--resume" in r.stdout and "--mixers" in r.stdout


def test_config_files_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  hidden_size: 64\n  num-layers: 3\ntrain:\n  steps: 7\n  mixers: [hydra, toeplitz]\nbf16: true\n")
    t = tmp_path / "c.toml"
    t.write_text('steps = 9\nmixers = ["mha"]\nlr = 1e-3\n')
    cfg = build_config(load_config_file(str(y)), {"steps": "11"})
    assert (cfg.hidden_size, cfg.num_layers, cfg.steps, cfg.mixers, cfg.bf16) == (64, 3, 11, ["hydra", "toeplitz"], True)
    cfg = build_config(load_config_file(str(t)), {"mixers": "hydra,mha"})
    assert (cfg.steps, cfg.lr, cfg.mixers) == (9, 1e-3, ["hydra", "mha"])


def test_shipped_example_configs_parse():
    root = os.path.join(os.path.dirname(SRC), "configs")
    files = sorted(os.listdir(root))
    assert files
    for name in files:
        values = load_config_file(os.path.join(root, name))
        values.pop("train_file", None), values.pop("validation_file", None), values.pop("init_from", None)
        build_config(values, {})


def _err(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[hydra-ssm]")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("hydra-ssm: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_errors_are_one_line_and_come_before_training(tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["train", "--output-dir", out, "--progress", "false"]
    assert "--steps" in _err(capsys, [*base, "--steps", "abc"])
    assert "--steps must be positive" in _err(capsys, [*base, "--steps", "0"])
    assert "--lr" in _err(capsys, [*base, "--lr", "-1"])
    assert "unknown mixer 'nope'" in _err(capsys, [*base, "--mixers", "hydra,nope"])
    assert "--task" in _err(capsys, [*base, "--task", "translate"])
    assert "--bf16" in _err(capsys, [*base, "--bf16", "maybe"])
    assert "no such file" in _err(capsys, [*base, "--train-file", str(tmp_path / "missing.txt")])
    assert "no such file" in _err(capsys, [*base, "--config", str(tmp_path / "missing.yaml")])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("steps: [1, 2\n")
    assert "cannot parse" in _err(capsys, [*base, "--config", str(bad_yaml)])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("stepz: 3\n")
    assert "unknown option 'stepz'" in _err(capsys, [*base, "--config", str(unknown)])
    assert "divisible" in _err(capsys, [*base, "--hidden-size", "48", "--headdim", "32", "--num-heads", "5",
                                        "--mixers", "mha"])

    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    assert "corpus is empty" in _err(capsys, [*base, "--train-file", str(empty)])
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    assert "not UTF-8" in _err(capsys, [*base, "--train-file", str(binary)])

    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n" + "".join(f"example {i},{i % 3}\n" for i in range(20)))
    assert "out of range" in _err(capsys, [*base, "--task", "classify", "--train-file", str(csv), "--num-labels", "2"])
    assert "no column 'sentence'" in _err(capsys, [*base, "--task", "classify", "--train-file", str(csv),
                                                   "--text-column", "sentence"])
    assert "needs --train-file" in _err(capsys, [*base, "--task", "classify"])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"text,label\n\xff\xfe oops,1\n")
    assert "not UTF-8" in _err(capsys, [*base, "--task", "classify", "--train-file", str(bad_csv)])
    # nothing was trained: no run directory was created for any of these
    assert not os.path.exists(os.path.join(out, "mlm", "hydra"))


def test_passthrough_subcommand_missing_module_is_one_line(capsys, monkeypatch):
    import hydra_ssm.cli as cli
    monkeypatch.setitem(cli.PASSTHROUGH, "bench", ("hydra_ssm.bench.does_not_exist", "x"))
    capsys.readouterr()
    assert main(["bench", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hydra_ssm.bench.does_not_exist" in err


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_default_job_plan_is_matched_and_small():
    """The defaults of `hydra-ssm train`: hydra vs mha, same budget, matched parameter counts."""
    from hydra_ssm.train.tasks import TaskData
    from hydra_ssm.train.loop import count_params, matched_intermediate
    cfg = TrainConfig()
    assert cfg.task == "mlm" and cfg.mixers == ["hydra", "mha"] and cfg.match_params and not cfg.train_file
    td = TaskData("mlm", {}, {}, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
    target = count_params(cfg, td, "hydra", 0)
    width = matched_intermediate(cfg, td, "mha", target)
    assert width > 0 and abs(count_params(cfg, td, "mha", width) - target) / target < 0.005
    assert target < 2_000_000
    json.dumps(cfg.to_dict())


def test_evaluate_takes_only_what_it_reads(tmp_path, capsys):
    from hydra_ssm.cli import EVALUATE_OPTIONS
    text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    import re
    listed = set(re.findall(r"^\s+--([a-z0-9-]+)", text, re.M))
    assert listed == {"model", *(n.replace("_", "-") for n in EVALUATE_OPTIONS)}, listed
    line = _err(capsys, ["evaluate", "--model", str(tmp_path), "--steps", "5", "--lr=1e-3"])
    assert "evaluate does not take --steps, --lr=1e-3" in line and "--validation-file" in line
    assert "unrecognized arguments: --nope" in _err(capsys, ["evaluate", "--model", str(tmp_path), "--nope"])
    assert "not a model directory" in _err(capsys, ["evaluate", "--model", str(tmp_path)])
