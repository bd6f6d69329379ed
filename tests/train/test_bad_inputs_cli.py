"""A catalogue of bad command lines: each stops with one line `hydra-ssm: error: ...` (exit 2) naming the problem,
before any training, and leaves what was on disk as it was.

One row per case: (id, setup, argv, expected substring). ``{ws}`` is a shared workspace (a tiny corpus, a CSV,
a directory, a plain file, and a finished 6-step run in ``{ws}/run``); ``{tmp}`` is the case's own directory,
which ``setup`` fills (a copy of the run, a damaged model...).
"""

import json
import os
import shutil
import sys

import pytest

pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import tiny, write_corpus  # noqa: E402

RUN = "mlm/hydra"
CK6 = f"{RUN}/checkpoints/step-0000006"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    write_corpus(d)
    (d / "t.csv").write_text("text,label\n" + "".join(f"example {i},{i % 2}\n" for i in range(40)))
    (d / "a_dir").mkdir()
    (d / "a_dir" / "a.txt").write_text("some text\n")
    (d / "a_file").write_text("x")
    assert main(["train", "--output-dir", str(d / "run"), *tiny(d)]) == 0
    return d


# ------------------------------------------------------------------------------------------ setups
def copy_run(ws, tmp):
    shutil.copytree(ws / "run", tmp / "run")


def copy_model(ws, tmp, keep_manifest=False):
    shutil.copytree(ws / "run" / RUN / "model", tmp / "model")
    if not keep_manifest:  # a model directory saved by other means
        (tmp / "model" / "manifest.json").unlink()


def edit(path, how):
    if how == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 3)
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "delete":
        path.unlink()
    else:
        path.write_text(how)


def damaged_model(file, how, keep_manifest=False):
    def setup(ws, tmp):
        copy_model(ws, tmp, keep_manifest)
        edit(tmp / "model" / file, how)
    return setup


def config_json(**changes):
    def setup(ws, tmp):
        copy_model(ws, tmp)
        cfg = json.loads((tmp / "model" / "config.json").read_text())
        (tmp / "model" / "config.json").write_text(json.dumps({**cfg, **changes}))
    return setup


def damaged_run(*files):
    def setup(ws, tmp):
        copy_run(ws, tmp)
        for f in files:
            edit(tmp / "run" / f, "truncate")
    return setup


def unwritable(ws, tmp):
    (tmp / "ro").mkdir()
    os.chmod(tmp / "ro", 0o500)


T = ["train", "--output-dir", "{tmp}/out", "--progress", "false", "--plot", "false", "--threads", "1"]
CLS = [*T, "--task", "classify", "--train-file", "{ws}/t.csv"]
EVAL = ["evaluate", "--threads", "1", "--model"]
root = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")

CASES = [
    # data files
    ("classify train dir", None, [*T, "--task", "classify", "--train-file", "{ws}/a_dir"], "--train-file: {ws}/a_dir is a directory"),
    ("classify val dir", None, [*CLS, "--validation-file", "{ws}/a_dir"], "--validation-file: {ws}/a_dir is a directory"),
    ("image train dir", None, [*T, "--task", "image", "--train-file", "{ws}/a_dir"], "--train-file: {ws}/a_dir is a directory; --task image reads one file"),
    ("compare with a table task", None, [*T, "--tasks", "mlm,classify", "--train-file", "{ws}/a_dir"], "--task classify reads one file"),
    ("image data not an npz", None, [*T, "--task", "image", "--train-file", "{ws}/t.csv"], "--train-file: {ws}/t.csv is not an .npz archive"),
    ("config a directory", None, [*T, "--config", "{ws}/a_dir"], "--config: {ws}/a_dir is a directory; expected a .yaml"),
    ("tokenizer-from a file", None, [*T, "--tokenizer-from", "{ws}/a_file"], "--tokenizer-from: {ws}/a_file is not a directory"),
    ("tokenizer-from empty dir", None, [*T, "--tokenizer-from", "{ws}/a_dir"], "--tokenizer-from: {ws}/a_dir has no tokenizer.json"),
    ("init-from not a model", None, [*CLS, "--init-from", "{ws}/a_dir"], "--init-from: {ws}/a_dir has no config.json"),
    ("init-from a file", None, [*CLS, "--init-from", "{ws}/a_file"], "--init-from: {ws}/a_file is not a directory"),
    # output directory
    ("output dir is a file", None, [*T[:2], "{ws}/a_file", *T[3:]], "--output-dir: {ws}/a_file exists and is not a directory"),
    ("output dir under a file", None, [*T[:2], "{ws}/a_file/sub", *T[3:]], "--output-dir: cannot write to {ws}/a_file/sub"),
    ("output dir empty", None, [*T[:2], "", *T[3:]], "--output-dir must name a directory"),
    pytest.param("output dir in /proc", None, [*T[:2], "/proc/hydra-ssm-test", *T[3:]], "--output-dir: cannot write to /proc/hydra-ssm-test", marks=linux, id="output dir in /proc"),
    pytest.param("output dir read-only", unwritable, [*T[:2], "{tmp}/ro/out", *T[3:]], "--output-dir: cannot write to {tmp}/ro/out", marks=root, id="output dir read-only"),
    # sequence lengths
    ("mlm seq-len 1", None, [*T, "--seq-len", "1"], "--seq-len 1 is too short for --task mlm"),
    ("mlm seq-len 2", None, [*T, "--seq-len", "2"], "--seq-len 2 is too short for --task mlm"),
    ("classify seq-len 2", None, [*CLS, "--seq-len", "2"], "--seq-len 2 is too short for --task classify"),
    ("classify pairs seq-len 4", None, [*CLS, "--text-pair-column", "text", "--seq-len", "4"], "(>= 5)"),
    # evaluate
    ("evaluate missing dir", None, [*EVAL, "{tmp}/nope"], "--model: {tmp}/nope is not a model directory"),
    ("evaluate a file", None, [*EVAL, "{ws}/a_file"], "is not a model directory"),
    ("evaluate truncated weights", damaged_model("model.safetensors", "truncate"), [*EVAL, "{tmp}/model"], "--model: cannot load the weights in {tmp}/model/model.safetensors"),
    ("evaluate garbage weights", damaged_model("model.safetensors", "garbage"), [*EVAL, "{tmp}/model"], "--model: cannot load the weights"),
    ("evaluate no weights", damaged_model("model.safetensors", "delete"), [*EVAL, "{tmp}/model"], "--model: {tmp}/model has no model.safetensors"),
    ("evaluate weights vs manifest", damaged_model("model.safetensors", "truncate", True), [*EVAL, "{tmp}/model"], "--model: {tmp}/model is damaged: model.safetensors has"),
    ("evaluate config vs manifest", damaged_model("config.json", "{}", True), [*EVAL, "{tmp}/model"], "is damaged: config.json has"),
    ("evaluate config not JSON", damaged_model("config.json", "{garbage"), [*EVAL, "{tmp}/model"], "--model: {tmp}/model/config.json is not valid JSON"),
    ("evaluate config a list", damaged_model("config.json", "[1, 2]"), [*EVAL, "{tmp}/model"], "is not a hydra-ssm model config (model_type None"),
    ("evaluate foreign config", config_json(model_type="bert"), [*EVAL, "{tmp}/model"], "is not a hydra-ssm model config (model_type 'bert'"),
    ("evaluate foreign architecture", config_json(architectures=["BertForMaskedLM"]), [*EVAL, "{tmp}/model"], "names architecture 'BertForMaskedLM'"),
    ("evaluate invalid hydra config", config_json(headdim=5), [*EVAL, "{tmp}/model"], "is not a valid Hydra config"),
    ("evaluate shapes differ", config_json(hidden_size=32), [*EVAL, "{tmp}/model"], "cannot load the weights"),
    ("evaluate damaged checkpoint", damaged_run(f"{CK6}/model.safetensors"), [*EVAL, f"{{tmp}}/run/{CK6}"], "is damaged: model.safetensors has"),
    ("evaluate damaged tokenizer", damaged_run(f"{CK6}/tokenizer.json"), [*EVAL, f"{{tmp}}/run/{CK6}"], "is damaged: tokenizer.json has"),
    # checkpoints and resuming
    ("fresh run over a finished one", copy_run, "fresh", "{tmp}/run/mlm/hydra already holds checkpoints of an earlier run (step-0000006); pass --resume"),
    ("resume --lr changed", copy_run, ["--lr", "0.01"], "was trained with other options: --lr 0.005 -> 0.01"),
    ("resume --batch-size changed", copy_run, ["--batch-size", "8"], "--batch-size 4 -> 8"),
    ("resume --seed changed", copy_run, ["--seed", "1"], "--seed 0 -> 1"),
    ("resume --steps below checkpoint", copy_run, ["--steps", "4"], "--steps 4 is below the checkpoint's step 6"),
    ("resume --steps shortened", damaged_run(f"{CK6}/model.safetensors"), ["--steps", "5"], "--steps 6 -> 5 (a run can be extended, not shortened)"),
    ("resume model changed", copy_run, ["--hidden-size", "32", "--d-state", "8"], "--d-state 4 -> 8; --hidden-size 16 -> 32"),
    ("resume data changed", copy_run, ["--validation-file", "{ws}/train.txt"], "--validation-file"),
    ("resume no complete checkpoint", damaged_run(*(f"{RUN}/checkpoints/step-000000{s}/trainer_state.json" for s in (2, 4, 6))), [],
     "--resume: no complete checkpoint in {tmp}/run/mlm/hydra/checkpoints (step-0000006: trainer_state.json has"),
]


def argv(ws, tmp, args):
    if isinstance(args, str) or not args or args[0] not in ("train", "evaluate"):  # a run over {tmp}/run
        extra = [] if args == "fresh" else ["--resume", *args]
        args = ["train", "--output-dir", "{tmp}/run", *tiny(ws), *extra]
    return [a.format(ws=ws, tmp=tmp) for a in args]


@pytest.mark.parametrize("name, setup, args, expected", [c if isinstance(c, type(pytest.param())) else
                                                       pytest.param(*c, id=c[0]) for c in CASES])
def test_bad_command_line(ws, tmp_path, capsys, name, setup, args, expected):
    if setup:
        setup(ws, tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(argv(ws, tmp_path, args)) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("[hydra-ssm]")]
    assert len(lines) == 1 and lines[0].startswith("hydra-ssm: error: "), err
    assert expected.format(ws=ws, tmp=tmp_path) in lines[0], lines[0]
    # nothing was written or deleted (an output directory may have been created, empty)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not (p.is_dir() and p.name == "out"))
    assert after == [p for p in before if p != "out"]


def test_evaluate_checkpoint_reads_only_what_it_needs(ws, tmp_path, capsys):
    """A checkpoint whose optimizer state is damaged still evaluates: its weights verify against the manifest."""
    damaged_run(f"{CK6}/optimizer.pt")(ws, tmp_path)
    capsys.readouterr()
    assert main([*EVAL, str(tmp_path / "run" / CK6)]) == 0
    got = json.loads(capsys.readouterr().out)
    res = json.loads((ws / "run" / RUN / "result.json").read_text())
    assert got["eval_loss"] == pytest.approx(res["val_loss"], rel=1e-6)
