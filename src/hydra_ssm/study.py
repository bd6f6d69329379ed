"""The matrix-mixer study (``hydra-ssm study``): a declared grid of training runs, and the report it makes.

A :class:`Preset` declares the grid: the tasks, and sections of arms (a mixer in one form, with its options
and model sizes) that answer one question each (which structured matrix class mixes best, does the
data-dependent form beat the data-independent one, does Hydra replace attention, which part of Hydra's design
matters). Every (section's task, arm) pair gets the same schedule:

1. a learning-rate sweep at seed 0 (every rate of the preset), which picks the arm's rate on that task by
   validation accuracy (a diverged run ranks last);
2. seeds 1 .. seeds-1 at the picked rate; seed 0's run is reused, so every row has ``seeds`` runs.

A task with ``pretrain`` is the GLUE protocol in miniature: each arm is first pretrained as a masked LM (the
same sweep at seed 0; the best pretraining rate wins), then every fine-tuning run starts from that encoder.

Every run is a normal run directory (``OUT/cells/<task>/<arm>/lr<rate>-seed<seed>``, what ``hydra-ssm
train`` writes for one mixer), written by a pool of worker processes. A run is complete when its
``result.json`` exists; an interrupted study continues where it stopped (complete runs are read back,
interrupted ones resume from their last checkpoint), and a run that diverged leaves ``failed.json`` (delete
it to try again). The report (tables, figures, the verdicts on the paper's claims) is made from the run
directories alone, so it can be rebuilt at any time.

Parameters are matched within a section: an arm with ``match_params`` gets the MLP width that brings its
parameter count closest to the section's reference arm (as ``hydra-ssm train`` does for a comparison);
an arm without it keeps its own sizes, and every table prints the counts.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from .train.config import TrainConfig, UsageError


@dataclass(frozen=True)
class Arm:
    """One model of the study: a registered mixer, its options, and the sizes that differ from the base."""

    name: str  # the label in tables and the run directory's name
    mixer: str  # registry name
    options: dict = field(default_factory=dict)  # mixer options, e.g. {"is_data_dependent": False}
    overrides: dict = field(default_factory=dict)  # TrainConfig fields, e.g. {"pooling": "mean"}
    depth_factor: int = 1  # blocks: this many times the preset's num_layers
    mlp_factor: int = 0  # MLP width: this many times the preset's hidden_size (0: the base's, or matched)
    match_params: bool = True  # MLP width matched to the section's reference arm
    matrix_class: str = ""  # the family section's pairing: the structured class ...
    form: str = ""  # ... and its form, "DI" or "SAM"
    note: str = ""  # what the arm is, for the report


@dataclass(frozen=True)
class Task:
    """A task of the study: TrainConfig fields, and optionally masked-LM pretraining before it."""

    name: str
    title: str
    overrides: dict
    pretrain: dict | None = None  # TrainConfig fields of the pretraining (task "mlm"), or None
    pretrain_lr: float | None = None  # pretrain at this one rate (None: sweep the preset's rates)
    docstring_data: bool = False  # classify the docstring-topic CSVs the study writes (train/docstrings.py)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    question: str
    tasks: tuple
    arms: tuple
    reference: str  # the arm whose parameter count the others match


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base: dict  # TrainConfig fields of every run
    tasks: tuple
    sections: tuple
    lrs: tuple
    seeds: int

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)


@dataclass(frozen=True)
class Run:
    """One training run of the grid (a cell)."""

    task: str  # the task's name, or "<task>-pretrain"
    arm: Arm
    lr: float
    seed: int
    config: dict  # the TrainConfig fields, complete
    width: dict  # {"reference": TrainConfig fields of the reference arm} when the MLP is matched, else {}

    @property
    def directory(self) -> str:
        return self.config["output_dir"]


# ---------------------------------------------------------------------------------------------- presets

def _family_arms() -> tuple:
    """The matrix classes of the paper in both forms (DI: a learned matrix; SAM: computed from the tokens)."""
    arms = []
    for mixer, title, forms in (("dense", "dense", ("DI",)), ("toeplitz", "Toeplitz", ("DI", "SAM")),
                                ("vandermonde", "Vandermonde", ("DI", "SAM")), ("cauchy", "Cauchy", ("DI", "SAM")),
                                ("low_rank", "low-rank", ("DI", "SAM")), ("attention", "attention", ("DI", "SAM")),
                                ("semiseparable", "semiseparable", ("DI", "SAM")),
                                ("quasiseparable", "quasiseparable", ("DI", "SAM"))):
        for form in forms:
            options = {} if mixer == "dense" else {"is_data_dependent": form == "SAM"}
            arms.append(Arm(f"{mixer}-{form.lower()}", mixer, options, matrix_class=title, form=form))
    arms.append(Arm("hydra", "hydra", matrix_class="quasiseparable (Hydra layer)", form="SAM",
                    note="the Hydra layer: quasiseparable SAM, each direction its own B and C, shift, per-token "
                         "diagonal"))
    return tuple(arms)


def _drop_in_arms() -> tuple:
    return (
        Arm("hydra", "hydra", note="mixer-only blocks, the base depth (the reference)"),
        Arm("mha", "mha", note="attention blocks with an MLP matched to Hydra's parameter count, same depth"),
        Arm("hydra-2x-depth", "hydra", depth_factor=2, match_params=False,
            note="the paper's recipe: mixer-only Hydra blocks at twice the depth ..."),
        Arm("mha-mlp4", "mha", mlp_factor=4, match_params=False,
            note="... against attention blocks with an MLP 4x the width (BERT/ViT blocks) at the base depth"),
    )


def _ablation_arms() -> tuple:
    return (
        Arm("hydra", "hydra", note="the Hydra layer (the reference): each direction its own B and C, shift, "
                                   "per-token diagonal, directions added"),
        Arm("hydra-no-shift", "hydra", {"shift": False},
            note="no shift: two semiseparable (Mamba-2) passes, diagonals included, added (the BiMamba style)"),
        Arm("hydra-no-token-diagonal", "hydra", {"per_token_diagonal": False},
            note="no per-token diagonal (fc_D): the diagonal is the per-head D alone"),
        Arm("hydra-shared-bc", "hydra", {"shared_bc": True},
            note="one B and one C for both directions (the quasiseparable matrix with tied generators)"),
        Arm("hydra-concat", "hydra", {"combine": "concat"},
            note="the two directions concatenated and projected instead of added"),
    )


def _recipe_arms() -> tuple:
    return (
        Arm("hydra", "hydra", note="the default recipe (the reference)"),
        Arm("hydra-own-init", "hydra", overrides={"mixer_init": "own"}, match_params=False,
            note="the mixers' projections keep PyTorch's default init (as mamba_ssm) instead of BERT's std 0.02"),
        Arm("hydra-mean-pool", "hydra", overrides={"pooling": "mean"}, match_params=False,
            note="mean pooling instead of the [CLS] position"),
    )


def _presets() -> dict:
    digits = Task("digits", "digits, 4x4 patches of 2x2 pixels (ViT-style)",
                  {"task": "image", "patch_size": 2, "validation_fraction": 0.2})
    pixels = Task("pixels", "digits as a sequence of 64 pixels",
                  {"task": "image", "patch_size": 1, "validation_fraction": 0.2})
    docs = Task("docs", "docstring topics (11 classes), fine-tuned for 250 steps from a masked LM pretrained for "
                        "400 steps at rate 0.003",
                {"task": "classify", "seq_len": 64, "text_column": "text", "label_column": "label", "steps": 250,
                 "warmup_steps": 25},
                pretrain={"task": "mlm", "seq_len": 64, "max_corpus_chars": 1_000_000, "vocab_size": 2048},
                pretrain_lr=3e-3, docstring_data=True)
    smoke = Preset(
        "smoke", "every mechanism of the study in about a minute: two rates, two seeds, pretraining and "
                 "fine-tuning, a matched and an unmatched arm, an ablation; too short to mean anything",
        base={"hidden_size": 32, "num_layers": 1, "d_state": 8, "headdim": 16, "num_heads": 2, "steps": 6,
              "batch_size": 8, "eval_every": 6, "eval_batches": 2, "warmup_steps": 2, "checkpoint_every": 3},
        tasks=(Task("digits", digits.title, digits.overrides),
               Task("docs", docs.title, {**docs.overrides, "seq_len": 32, "steps": 6, "warmup_steps": 2},
                    pretrain={**docs.pretrain, "seq_len": 32, "max_corpus_chars": 60_000, "vocab_size": 400},
                    docstring_data=True)),
        sections=(Section("family", "Matrix classes, DI and SAM", "Which structured matrix mixes best?",
                          ("digits",), (Arm("toeplitz-di", "toeplitz", {"is_data_dependent": False},
                                            matrix_class="Toeplitz", form="DI"),
                                        Arm("toeplitz-sam", "toeplitz", {"is_data_dependent": True},
                                            matrix_class="Toeplitz", form="SAM"),
                                        Arm("hydra", "hydra", matrix_class="quasiseparable (Hydra layer)",
                                            form="SAM")), "hydra"),
                  Section("drop-in", "Hydra against attention", "Does Hydra replace attention?",
                          ("digits", "docs"), _drop_in_arms()[:2] + _drop_in_arms()[3:],
                          "hydra"),
                  Section("ablations", "Hydra's design", "Which parts of Hydra's design matter?", ("digits",),
                          _ablation_arms()[:2], "hydra")),
        lrs=(1e-3, 3e-3), seeds=2)
    paper_small = Preset(
        "paper-small", "the study of docs/results.md: the paper's matrix classes in both forms, Hydra against "
                       "attention under two parameter-matching recipes, Hydra's ablations and the recipe checks; "
                       "width 64, 2 blocks, three learning rates, three seeds",
        base={"hidden_size": 64, "num_layers": 2, "d_state": 16, "headdim": 16, "num_heads": 4, "steps": 400,
              "batch_size": 32, "eval_every": 50, "eval_batches": 0, "warmup_steps": 40, "checkpoint_every": 200},
        tasks=(digits, pixels, docs),
        sections=(
            Section("drop-in", "Hydra against attention",
                    "Does Hydra replace attention, at matched parameters (same depth, MLP matched) and in the "
                    "paper's recipe (mixer-only Hydra at twice the depth against attention + MLP)?",
                    ("digits", "pixels", "docs"), _drop_in_arms(), "hydra"),
            Section("ablations", "Hydra's design", "Which parts of Hydra's design matter?",
                    ("pixels",), _ablation_arms(), "hydra"),
            Section("recipe", "The training recipe", "Does Hydra trail for want of its recipe?",
                    ("pixels",), _recipe_arms(), "hydra"),
            Section("family", "Matrix classes, DI and SAM",
                    "Does the data-dependent (SAM) form beat the data-independent (DI) one, and which structured "
                    "class is best? (On digits only: the budget of one session on 2 cores.)",
                    ("digits",), _family_arms(), "hydra"),
        ),
        lrs=(1e-3, 3e-3, 1e-2), seeds=3)
    return {p.name: p for p in (smoke, paper_small)}


PRESETS = _presets()


# ---------------------------------------------------------------------------------------------- the grid

def _arm_fields(preset: Preset, arm: Arm) -> dict:
    """The TrainConfig fields an arm sets: its overrides, with depth and MLP width scaled from the base."""
    out = dict(arm.overrides)
    if arm.depth_factor != 1:
        out["num_layers"] = preset.base["num_layers"] * arm.depth_factor
    if arm.mlp_factor:
        out["intermediate_size"] = preset.base["hidden_size"] * arm.mlp_factor
    return out


def _config(preset: Preset, out: str, task_fields: dict, arm: Arm, lr: float, seed: int, task_dir: str) -> dict:
    fields = {**TrainConfig().to_dict(), **preset.base, **task_fields, **_arm_fields(preset, arm),
              "mixers": [arm.mixer], "mixer_options": dict(arm.options), "lr": lr, "seed": seed,
              "match_params": False, "progress": False, "plot": False, "threads": 1}
    fields["output_dir"] = os.path.join(out, "cells", task_dir, arm.name, f"lr{lr:g}-seed{seed}")
    return fields


class Grid:
    """The runs of a preset that can be named now, given the results so far (the sweeps pick the rates)."""

    def __init__(self, preset: Preset, out: str):
        self.preset, self.out = preset, out
        self.data_dir = os.path.join(out, "data")
        self.tokenizer_dir = os.path.join(out, "data", "tokenizer")

    def _task_fields(self, task: Task, pretrained: str | None) -> dict:
        fields = dict(task.overrides)
        if task.docstring_data:
            fields.update(train_file=os.path.join(self.data_dir, "docstrings", "train.csv"),
                          validation_file=os.path.join(self.data_dir, "docstrings", "validation.csv"))
        if pretrained:
            fields["init_from"] = os.path.join(pretrained, "model")
        return fields

    def _run(self, section: Section, task: Task, arm: Arm, lr: float, seed: int, pretrained: str | None,
             pretraining: bool = False) -> Run:
        if pretraining:
            fields = {**task.pretrain, "tokenizer_from": self.tokenizer_dir}
            task_dir = f"{task.name}-pretrain"
        else:
            fields, task_dir = self._task_fields(task, pretrained), task.name
        config = _config(self.preset, self.out, fields, arm, lr, seed, task_dir)
        width = {}
        if arm.match_params and arm.name != section.reference and not pretrained:
            ref = next(a for a in section.arms if a.name == section.reference)
            width = {"reference": _config(self.preset, self.out, fields, ref, lr, seed, task_dir)}
        return Run(task_dir, arm, lr, seed, config, width)

    def sweep_then_seeds(self, section, task, arm, pretrained, results, pretraining=False) -> list:
        """The sweep's runs, then (once every one of them has ended) the other seeds at the best rate."""
        rates = (task.pretrain_lr,) if pretraining and task.pretrain_lr else self.preset.lrs
        sweep = [self._run(section, task, arm, lr, 0, pretrained, pretraining) for lr in rates]
        runs = list(sweep)
        best = best_run(sweep, results)
        if best is not None and not pretraining:
            runs += [self._run(section, task, arm, best.lr, s, pretrained) for s in range(1, self.preset.seeds)]
        return runs

    def runs(self, results: dict) -> list:
        """Every run that can be named now (complete or not), in a fixed order, without repeats."""
        named: dict = {}
        for section in self.preset.sections:
            for task_name in section.tasks:
                task = self.preset.task(task_name)
                for arm in section.arms:
                    pretrained = None
                    if task.pretrain:
                        pre = self.sweep_then_seeds(section, task, arm, None, results, pretraining=True)
                        named.update((r.directory, r) for r in pre)
                        best = best_run(pre, results)
                        if best is None:
                            continue
                        pretrained = best.directory
                    for r in self.sweep_then_seeds(section, task, arm, pretrained, results):
                        if r.directory in named and (named[r.directory].config, named[r.directory].width) != \
                                (r.config, r.width):
                            raise ValueError(f"preset {self.preset.name!r}: two sections name arm {arm.name!r} "
                                             f"on task {task.name!r} with different settings; give them two names")
                        named.setdefault(r.directory, r)
        return list(named.values())


def best_run(sweep: list, results: dict):
    """The sweep's best run by validation accuracy (diverged runs last), or None while any has not ended."""
    if any(r.directory not in results for r in sweep):
        return None
    scored = [(results[r.directory].get("val_accuracy", -math.inf), -i, r) for i, r in enumerate(sweep)]
    return max(scored, key=lambda t: (t[0], t[1]))[2]


# ---------------------------------------------------------------------------------------------- running

def read_result(directory: str) -> dict | None:
    """The run's result (its result.json, or failed.json for a run that diverged), or None if it has not ended."""
    for name in ("result.json", "failed.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path) as fh:
                return json.load(fh)
    return None


_DATA_CACHE: dict = {}


def _data_key(cfg: TrainConfig) -> str:
    """What a run's data depends on: the task and data fields, and the tokenizer file it encodes with."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    data_fields = names[names.index("train_file"):names.index("init_from")]
    key = {n: getattr(cfg, n) for n in ["task", *data_fields]}
    source = cfg.init_from or cfg.tokenizer_from
    if source:
        with open(os.path.join(source, "tokenizer.json"), "rb") as fh:
            key["tokenizer"] = hashlib.sha256(fh.read()).hexdigest()
    return json.dumps(key, sort_keys=True, default=str)


def _task_data(cfg: TrainConfig):
    """The run's task data, built once per worker process for runs that share it."""
    from .train.runner import build_task
    from .train.tokenization import load_tokenizer

    key = _data_key(cfg)
    if key not in _DATA_CACHE:
        source = cfg.init_from or cfg.tokenizer_from
        tokenizer = load_tokenizer(source) if source and cfg.task in ("mlm", "classify") else None
        _DATA_CACHE.clear()  # one task's data at a time: the grid runs a task's runs together
        _DATA_CACHE[key] = build_task(cfg, cfg.task, tokenizer)
    return _DATA_CACHE[key]


def run_one(run: Run) -> dict:
    """Train one run of the grid in this process (a pool worker); returns its result row, or the failure."""
    import torch

    from .train.checkpoints import atomic_json, checkpoint_dirs
    from .train.loop import Dist, count_params, matched_intermediate, train_run

    torch.set_num_threads(1)
    cfg = TrainConfig(**run.config)
    cfg = cfg.replace(resume=bool(checkpoint_dirs(cfg.output_dir))).validate()
    data = _task_data(cfg)
    width = cfg.intermediate_size
    if run.width:
        ref = TrainConfig(**run.width["reference"])
        width = matched_intermediate(cfg, data, run.arm.mixer, count_params(ref, data, ref.mixers[0],
                                                                             ref.intermediate_size))
    try:
        return train_run(cfg, data, run.arm.mixer, cfg.output_dir, Dist(cfg), width, label=f"{run.task}/{run.arm.name}")
    except FloatingPointError as err:  # a rate too high for the arm: the sweep ranks it last
        failure = {"failed": str(err), "val_accuracy": -math.inf, "lr": cfg.lr, "seed": cfg.seed}
        atomic_json(os.path.join(cfg.output_dir, "failed.json"), {**failure, "val_accuracy": None})
        return failure


def _worker_init():
    import threading

    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    parent = os.getppid()

    def watch():  # a worker whose study was killed stops too, rather than write a run nobody reads
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _lock(out: str):
    """Hold ``OUT/study.lock`` while the study runs: two studies in one directory would train the same runs."""
    import fcntl

    fh = open(os.path.join(out, "study.lock"), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"another hydra-ssm study is running in {out}; wait for it, or stop it first") from None
    return fh


def prepare_data(grid: Grid) -> None:
    """The data every worker shares, written once: the docstring-topic CSVs and the pretraining tokenizer."""
    from .train.docstrings import write_docstring_topics
    from .train.tasks import mlm_data
    from .train.tokenization import save_tokenizer

    tasks = [grid.preset.task(n) for n in dict.fromkeys(t for s in grid.preset.sections for t in s.tasks)]
    if any(t.docstring_data for t in tasks):
        target = os.path.join(grid.data_dir, "docstrings")
        if not os.path.isfile(os.path.join(target, "validation.csv")):
            os.makedirs(target, exist_ok=True)
            write_docstring_topics(target)
    pretrain = next((t.pretrain for t in tasks if t.pretrain), None)
    if pretrain and not os.path.isfile(os.path.join(grid.tokenizer_dir, "tokenizer.json")):
        cfg = TrainConfig(**{**TrainConfig().to_dict(), **grid.preset.base, **pretrain})
        save_tokenizer(mlm_data(cfg).tokenizer, grid.tokenizer_dir)


def _identity(run: Run) -> dict:
    return json.loads(json.dumps({"config": run.config, "width": run.width}, default=str))


def _settings(identity: dict) -> dict:
    """A run's settings without the fields at TrainConfig's defaults, so that a field added to TrainConfig later
    (at a default that keeps the old behaviour) does not make earlier runs look different."""
    defaults = json.loads(json.dumps(TrainConfig().to_dict(), default=str))

    def strip(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}

    width = identity.get("width") or {}
    return {"config": strip(identity["config"]), "width": {k: strip(v) for k, v in width.items()}}


def _read_results(runs: list) -> dict:
    """The ended runs' results; a run directory written with other settings is an error."""
    results = {}
    for r in runs:
        res = read_result(r.directory)
        path = os.path.join(r.directory, "study_run.json")
        if os.path.isfile(path):
            with open(path) as fh:
                if _settings(json.load(fh)) != _settings(_identity(r)):
                    raise UsageError(f"{r.directory} was trained with other settings than this preset's; remove "
                                     f"it to train it again, or choose another --output-dir")
        if res is not None:
            results[r.directory] = {**res, "val_accuracy": res["val_accuracy"] if res.get("val_accuracy") is not None
                                    else -math.inf}
    return results


def run_study(preset: Preset, out: str, jobs: int = 2, log=sys.stderr) -> dict:
    """Run (or continue) the study; returns ``{run directory: result}`` for every run of the grid."""
    os.makedirs(out, exist_ok=True)
    lock = _lock(out)
    try:
        return _run_study(preset, out, jobs, log)
    finally:
        lock.close()


def _run_study(preset: Preset, out: str, jobs: int, log) -> dict:
    from .train.checkpoints import atomic_json

    grid = Grid(preset, out)
    prepare_data(grid)
    results = _read_results(grid.runs({}))
    results = _read_results(_closure(grid, results))
    t0, started = time.perf_counter(), 0
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init) as pool:
        running: dict = {}
        while True:
            for r in grid.runs(results):
                if r.directory in results or r.directory in running or len(running) >= jobs:
                    continue
                ended = _read_results([r])  # named only now (its sweep just ended), but run before
                if ended:
                    results.update(ended)
                    continue
                os.makedirs(r.directory, exist_ok=True)
                atomic_json(os.path.join(r.directory, "study_run.json"), _identity(r))
                running[r.directory] = (r, pool.submit(run_one, r))
                started += 1
            if not running:
                break
            done, _ = futures.wait([f for _, f in running.values()], return_when=futures.FIRST_COMPLETED)
            for key in [k for k, (_, f) in running.items() if f in done]:
                r, f = running.pop(key)
                res = f.result()  # an error other than divergence stops the study (rerun to continue)
                results[key] = res
                what = "diverged" if "failed" in res else f"val acc {res['val_accuracy']:.4f}"
                print(f"[study] {len(results)} runs ended ({started} started here, "
                      f"{time.perf_counter() - t0:.0f}s): {r.task}/{r.arm.name} lr {r.lr:g} seed {r.seed}: {what}",
                      file=log, flush=True)
    return results


def _closure(grid: Grid, results: dict) -> list:
    """Every run nameable from the results on disk (the sweeps already ended pick their rates)."""
    while True:
        runs = grid.runs(results)
        more = _read_results(runs)
        if len(more) == len(results):
            return runs
        results = more



# ---------------------------------------------------------------------------------------------- the report

@dataclass
class Row:
    """One (section, task, arm): its sweep, the picked rate and the seeds' accuracies there."""

    section: str
    task: str
    arm: Arm
    sweep: dict  # rate -> validation accuracy at seed 0, "diverged", or None while the run has not ended
    lr: float | None  # the picked rate (None while the sweep runs)
    accuracies: list  # the seeds' validation accuracies at the picked rate (ended, not diverged)
    diverged: int  # seeds at the picked rate that diverged
    params: int | None
    tokens_per_s: float | None
    wall_s: float  # all the row's runs, sweep included
    late_gain: float | None  # validation accuracy gained over the last quarter of the steps (mean over seeds)
    curve: list  # (step, mean validation accuracy over the seeds) at the picked rate

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else None

    def cell(self) -> str:
        if self.mean is None:
            return "diverged" if self.diverged else "-"
        text = f"{self.mean:.3f}" + (f" ± {self.std:.3f}" if self.std is not None else "")
        return text + (f" ({self.diverged} diverged)" if self.diverged else "")


def collect(preset: Preset, out: str) -> list:
    """The report's rows, from the run directories alone."""
    from .train.runner import eval_curve

    grid = Grid(preset, out)
    runs = _closure(grid, _read_results(grid.runs({})))
    results = _read_results(runs)
    rows = []
    for section in preset.sections:
        for task_name in section.tasks:
            task = preset.task(task_name)
            for arm in section.arms:
                mine = [r for r in runs if r.arm.name == arm.name and r.task == task.name]
                pre = [r for r in runs if r.arm.name == arm.name and r.task == f"{task.name}-pretrain"]
                if task.pretrain:  # fine-tuning runs start from this section's arm pretrained
                    mine = [r for r in mine if r.config.get("init_from")]
                sweep = [r for r in mine if r.seed == 0]
                best = best_run(sweep, results) if len(sweep) == len(preset.lrs) else None
                at_best = [r for r in mine if best is not None and r.lr == best.lr]
                ended = [results[r.directory] for r in at_best if r.directory in results]
                good = [res for res in ended if "failed" not in res]
                curves = [eval_curve(r.directory) for r in at_best
                          if r.directory in results and "failed" not in results[r.directory]]
                rows.append(Row(
                    section.name, task.name, arm,
                    {r.lr: (None if r.directory not in results else "diverged" if "failed" in results[r.directory]
                            else results[r.directory]["val_accuracy"]) for r in sweep},
                    best.lr if best else None, [res["val_accuracy"] for res in good],
                    sum("failed" in res for res in ended), good[0]["params"] if good else None,
                    statistics.fmean(res["tokens_per_s"] for res in good) if good else None,
                    sum(results[r.directory].get("wall_s", 0) for r in mine + pre if r.directory in results),
                    _late_gain(curves), _mean_curve(curves)))
    return rows


def _late_gain(curves: list) -> float | None:
    from .train.runner import late_gain

    gains = [g for g in (late_gain(c) for c in curves) if g is not None]
    return statistics.fmean(gains) if gains else None


def _mean_curve(curves: list) -> list:
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    return [(s, statistics.fmean(dict(c)[s] for c in curves)) for s in steps]


def _find(rows, section, task, arm):
    return next((r for r in rows if r.section == section and r.task == task and r.arm.name == arm), None)


def _diff(a: Row | None, b: Row | None) -> str:
    """a - b with a word on whether it exceeds the noise (the larger of the two standard deviations)."""
    if a is None or b is None or a.mean is None or b.mean is None:
        return "n/a"
    d = a.mean - b.mean
    noise = max(a.std or 0.0, b.std or 0.0)
    word = "within noise" if abs(d) <= noise else ("better" if d > 0 else "worse")
    return f"{d:+.3f} ({word})"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _md_table(head: list, rows: list, left: tuple = (0,)) -> str:
    """A markdown table: the columns ``left`` (indices, negative from the end) left-aligned, the others right."""
    left = {i % len(head) for i in left}
    align = ["---" if i in left else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _outcome(diff: float, noise: float) -> str:
    """Whether a difference in the direction the paper reports (``diff`` > 0) reproduces it at this scale."""
    if diff > noise:
        return "reproduced"
    if -diff > noise:
        return "not reproduced"
    return "can't tell at this scale (within noise)"


def family_pairs(preset: Preset, rows: list) -> list:
    """(task, class, DI row, SAM row) of every class of the family section that has both forms."""
    fam = next((s for s in preset.sections if s.name == "family"), None)
    pairs = []
    for task in fam.tasks if fam else ():
        for cls in dict.fromkeys(a.matrix_class for a in fam.arms):
            form = {r.arm.form: r for r in rows if r.section == "family" and r.task == task
                    and r.arm.matrix_class == cls}
            if "DI" in form and "SAM" in form:
                pairs.append((task, cls, form["DI"], form["SAM"]))
    return pairs


def verdicts(preset: Preset, rows: list) -> list:
    """Sentences on the paper's three claims, the ablations and the recipe, computed from the rows, each claim
    judged against the paper: reproduced, not reproduced, or can't tell at this scale."""
    out = []
    pairs = [(t, c, sam.mean - di.mean, max(sam.std or 0, di.std or 0)) for t, c, di, sam in
             family_pairs(preset, rows) if di.mean is not None and sam.mean is not None]
    if pairs:
        wins = sum(d > 0 for *_, d, _ in pairs)
        clear = sum(d > n for *_, d, n in pairs)
        losses = sum(-d > n for *_, d, n in pairs)
        outcome = ("reproduced" if clear * 2 >= len(pairs) and not losses else
                   "not reproduced" if losses * 2 >= len(pairs) else "can't tell at this scale")
        out.append(f"**Claim 1, SAM beats DI: {outcome}.** The data-dependent form scored higher in {wins} of "
                   f"{len(pairs)} (class, task) pairs; by more than the larger standard deviation in {clear}, and "
                   f"lower by more than it in {losses}.")
    fam = next((s for s in preset.sections if s.name == "family"), None)
    for task in fam.tasks if fam else ():
        ranked = sorted((r for r in rows if r.section == "family" and r.task == task and r.mean is not None),
                        key=lambda r: -r.mean)
        ours = [r for r in ranked if r.arm.name in ("hydra", "quasiseparable-sam")]
        if not ranked or not ours:
            continue
        place = {r.arm.name: i + 1 for i, r in enumerate(ranked)}
        top, best_ours = ranked[0], ours[0]
        outcome = "reproduced" if best_ours is top else _outcome(best_ours.mean - top.mean,
                                                                 max(best_ours.std or 0, top.std or 0))
        out.append(f"**Claim 2, quasiseparable is the best class ({task}): {outcome}.** Of {len(ranked)} arms, the "
                   f"Hydra layer ranks {place.get('hydra', 'n/a')} and the quasiseparable SAM mixer "
                   f"{place.get('quasiseparable-sam', 'n/a')}; the top three: "
                   + ", ".join(f"{r.arm.name} {r.mean:.3f}" for r in ranked[:3]) + ".")
    sec = next((s for s in preset.sections if s.name == "drop-in"), None)
    for task in sec.tasks if sec else ():
        parts = []
        for label, a, b in (("same depth, parameters matched", "hydra", "mha"),
                            ("the paper's recipe, Hydra at twice the depth against attention + MLP",
                             "hydra-2x-depth", "mha-mlp4")):
            x, y = _find(rows, "drop-in", task, a), _find(rows, "drop-in", task, b)
            if x and y and x.mean is not None and y.mean is not None:
                parts.append(f"{label}: Hydra minus attention {x.mean - y.mean:+.3f}, "
                             f"{_outcome(x.mean - y.mean, max(x.std or 0, y.std or 0))}")
        if parts:
            out.append(f"**Claim 3, Hydra replaces attention ({task}).** " + "; ".join(parts) + ".")
    losses = []
    for section in preset.sections:
        for task in section.tasks:
            ref = _find(rows, section.name, task, section.reference)
            if ref is None or ref.mean is None or section.reference != "hydra":
                continue
            better = [r for r in rows if r.section == section.name and r.task == task and r.mean is not None
                      and r.arm.mixer != "hydra" and r.mean - ref.mean > max(r.std or 0, ref.std or 0)]
            losses += [f"{r.arm.name} on {task} ({r.mean:.3f} against {ref.mean:.3f})" for r in better]
    out.append("**Where Hydra loses** (another mixer ahead of the Hydra layer by more than the noise): "
               + ("; ".join(dict.fromkeys(losses)) if losses else "nowhere in this grid") + ".")
    for name, what in (("ablations", "Ablations (the paper: each part helps)"), ("recipe", "Recipe checks")):
        sec = next((s for s in preset.sections if s.name == name), None)
        for task in sec.tasks if sec else ():
            ref = _find(rows, name, task, sec.reference)
            parts = []
            for arm in sec.arms:
                row = _find(rows, name, task, arm.name)
                if arm.name == sec.reference or not (row and ref and row.mean is not None and ref.mean is not None):
                    continue
                d, noise = row.mean - ref.mean, max(row.std or 0, ref.std or 0)
                judged = f", {_outcome(-d, noise)}" if name == "ablations" else \
                    f" ({'within noise' if abs(d) <= noise else 'better' if d > 0 else 'worse'})"
                parts.append(f"{arm.name} {d:+.3f}{judged}")
            if parts:
                out.append(f"**{what}, {task}, each minus {sec.reference}:** " + "; ".join(parts) + ".")
    return out


def report(preset: Preset, out: str, results_path: str, command: str, wall_s: float | None = None) -> str:
    """Write the study's markdown report (and its figures beside it, in img/); returns the path."""
    from .bench.machine import machine_description
    from .train.checkpoints import atomic_write

    rows = collect(preset, out)
    base = TrainConfig(**{**TrainConfig().to_dict(), **preset.base})
    ended = _read_results(_closure(Grid(preset, out), {}))
    runs_ended = len(ended)
    train_hours = sum(r.get("wall_s", 0) for r in ended.values()) / 3600
    lines = [f"# The matrix-mixer study: preset `{preset.name}`", "",
             f"{preset.description[:1].upper()}{preset.description[1:]}.", "",
             f"Command: `{command}`", "",
             f"Machine: {machine_description('cpu').replace(f'{torch_threads()} torch threads', 'one torch thread per run')}"
             f". {runs_ended} runs ended, {train_hours:.1f} hours of training in all (one thread each)" + (f"; the last invocation took {wall_s / 60:.1f} minutes" if wall_s else "")
             + ".", "",
             "## How to read it", "",
             f"- Every model: width {base.hidden_size}, {base.num_layers} blocks unless an arm says otherwise, "
             f"{base.steps} steps of batch {base.batch_size}, AdamW with {base.warmup_steps} warm-up steps and cosine "
             f"decay, weight decay {base.weight_decay}.",
             f"- Learning rate: each (task, arm) ran every rate of {', '.join(f'{x:g}' for x in preset.lrs)} at seed "
             f"0 and kept the best by validation accuracy; seeds 1..{preset.seeds - 1} then ran at that rate. "
             f"The numbers are mean ± standard deviation of validation accuracy over the {preset.seeds} seeds (seed "
             "0's run is the sweep's, so it was picked on the same validation data: an optimistic bias shared by "
             "every arm).",
             "- Parameters are matched within a section: an arm marked 'matched' has the MLP width that brings its "
             "count closest to the section's reference; the others keep their own sizes. The detail tables print "
             "every count.",
             "- A picked rate marked '(edge)' is the lowest or highest of the sweep: a rate beyond it might have "
             "done better.",
             "- 'late gain' is the validation accuracy gained over the last quarter of the steps (mean over seeds): "
             "near 0, the curve is flat at the end; large, the budget ended while the model was still learning.",
             "- 'better'/'worse' below mean a difference larger than the larger of the two standard deviations; "
             "smaller ones are 'within noise'.", "",
             "## Tasks", ""]
    for t in preset.tasks:
        lines.append(f"- **{t.name}**: {t.title}." + (" Each arm is first pretrained as a masked LM on the "
                                                       "interpreter's own text, at seed 0 (with several rates, the "
                                                       "best pretraining run is the one fine-tuned)." if t.pretrain
                                                       else ""))
    lines += ["", "## What the study found", ""] + [f"- {v}" for v in verdicts(preset, rows)]
    fig_dir = os.path.join(os.path.dirname(os.path.abspath(results_path)), "img")
    figures = plot_study(preset, rows, fig_dir)
    for section in preset.sections:
        srows = [r for r in rows if r.section == section.name]
        lines += ["", f"## {section.title}", "", section.question, ""]
        head = ["arm", *section.tasks, "what it is"]
        body = []
        for arm in section.arms:
            cells = [(_find(srows, section.name, t, arm.name) or Row(section.name, t, arm, {}, None, [], 0, None,
                                                                    None, 0, None, [])).cell() for t in section.tasks]
            size = "reference" if arm.name == section.reference else ("matched" if arm.match_params else "own sizes")
            what = "; ".join(x for x in (f"{arm.form} form" if arm.form else "", size, arm.note) if x)
            body.append([arm.name, *cells, what])
        lines.append(_md_table(head, body, left=(0, -1)))
        if section.name == "family":
            lines += ["", "The same classes paired, SAM minus DI:", "",
                      _md_table(["class", "task", "DI", "SAM", "SAM - DI"],
                                [[cls, task, di.cell(), sam.cell(), _diff(sam, di)]
                                 for task, cls, di, sam in family_pairs(preset, rows)], left=(0, 1))]
        if section.name in figures:
            lines += ["", f"![{section.title}](img/{os.path.basename(figures[section.name])})"]
        lines += ["", "<details><summary>Per run: parameters, rates, seeds, speed</summary>", "",
                  _md_table(["task", "arm", "params", "sweep (rate: acc at seed 0)", "picked", "seeds' acc",
                             "late gain", "tokens/s", "wall s"],
                            [[r.task, r.arm.name, f"{r.params:,}" if r.params else "-",
                              ", ".join(f"{lr:g}: {'-' if a is None else a if isinstance(a, str) else f'{a:.3f}'}"
                                        for lr, a in sorted(r.sweep.items())),
                              (f"{r.lr:g}" + (" (edge)" if len(r.sweep) > 1 and r.lr in (min(r.sweep), max(r.sweep))
                                              else "")) if r.lr else "-", ", ".join(f"{a:.3f}" for a in r.accuracies),
                              f"{r.late_gain:+.3f}" if r.late_gain is not None else "-",
                              f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-", f"{r.wall_s:.0f}"]
                             for r in srows], left=(0, 1, 3)), "", "</details>"]
    if "curves" in figures:
        lines += ["", "## Learning curves (Hydra against attention)", "",
                  f"![learning curves](img/{os.path.basename(figures['curves'])})"]
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    atomic_write(results_path, lambda fh: fh.write("\n".join(lines) + "\n"))
    return results_path


def plot_study(preset: Preset, rows: list, fig_dir: str) -> dict:
    """Bars with error bars per section, and the drop-in section's learning curves; {} without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    os.makedirs(fig_dir, exist_ok=True)
    paths = {}
    for section in preset.sections:
        fig, axes = plt.subplots(1, len(section.tasks), figsize=(4.2 * len(section.tasks), 0.8 + 0.32 * len(section.arms)),
                                 squeeze=False)
        for ax, task in zip(axes[0], section.tasks):
            arms = [a.name for a in section.arms]
            got = [_find(rows, section.name, task, a) for a in arms]
            means = [r.mean if r and r.mean is not None else 0.0 for r in got]
            stds = [r.std if r and r.std is not None else 0.0 for r in got]
            colours = ["tab:orange" if a == section.reference else "tab:blue" for a in arms]
            ax.barh(range(len(arms)), means, xerr=stds, color=colours, capsize=3)
            ax.set_yticks(range(len(arms)), arms if ax is axes[0][0] else [""] * len(arms))
            ax.invert_yaxis()
            ax.set(title=task, xlabel="validation accuracy")
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(section.title)
        fig.tight_layout()
        paths[section.name] = os.path.join(fig_dir, f"study-{preset.name}-{section.name}.png")
        fig.savefig(paths[section.name], dpi=100)
        plt.close(fig)
    sec = next((s for s in preset.sections if s.name == "drop-in"), None)
    if sec is not None:
        fig, axes = plt.subplots(1, len(sec.tasks), figsize=(4.2 * len(sec.tasks), 3.4), squeeze=False)
        for ax, task in zip(axes[0], sec.tasks):
            for arm in sec.arms:
                r = _find(rows, sec.name, task, arm.name)
                if r and r.curve:
                    ax.plot([s for s, _ in r.curve], [a for _, a in r.curve], "o-", ms=2, label=arm.name)
            ax.set(title=task, xlabel="step", ylabel="validation accuracy (mean over seeds)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths["curves"] = os.path.join(fig_dir, f"study-{preset.name}-curves.png")
        fig.savefig(paths["curves"], dpi=100)
        plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------- command line

def main(argv: list | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="hydra-ssm study", description=__doc__.split("\n\n")[0] + ". Writes the run "
                                "directories under --output-dir, then the report (--results) and its figures "
                                "(img/ beside it). Run it again to continue an interrupted study.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke",
                   help="the grid: " + "; ".join(f"{n}: {q.description}" for n, q in sorted(PRESETS.items())))
    p.add_argument("--output-dir", default="", help="the study's run directories (default: runs/study-PRESET)")
    p.add_argument("--results", default="", help="the markdown report (default: OUTPUT_DIR/results.md)")
    p.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                   help="runs trained at once, one process and one thread each (default: the cores, at most 2)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the runs that have ended, "
                   "train nothing")
    args = p.parse_args(argv)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.jobs < 1:
        print(f"hydra-ssm study: error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    preset = PRESETS[args.preset]
    out = args.output_dir or os.path.join("runs", f"study-{preset.name}")
    results = args.results or os.path.join(out, "results.md")
    command = "hydra-ssm study --preset " + preset.name + (f" --results {args.results}" if args.results else "")
    try:
        t0 = time.perf_counter()
        wall = None
        if not args.report_only:
            run_study(preset, out, args.jobs)
            wall = time.perf_counter() - t0
        path = report(preset, out, results, command, wall)
    except UsageError as err:
        print(f"hydra-ssm study: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
