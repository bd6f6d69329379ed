"""Training configuration: one flat dataclass, read from YAML/TOML, overridden on the command line.

Every field has a help string; the command line builds one ``--option`` per field
from it, so ``hydra-ssm train --help`` documents all of them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

TASKS = ("mlm", "classify", "image", "synthetic")
SYNTHETIC_TASKS = ("mqar", "listops", "parity", "s5")
TOKEN_LEVEL_SYNTHETIC = ("mqar", "parity", "s5")  # a label per position (the others classify sequences)
TOKENIZERS = ("wordpiece", "bpe", "byte")


class UsageError(Exception):
    """A problem with the configuration or the data: reported as one line, no traceback."""


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


def _fl(default, help: str, **kw):
    return field(default_factory=lambda: list(default), metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # ---------------------------------------------------------------- what to run
    task: str = _f("mlm", "task: mlm (masked-LM pretraining), classify (sequence classification from files), "
                          "image (ViT-style classification; default data: scikit-learn's digits), "
                          "synthetic (generated: see --synthetic-task)", choices=TASKS)
    tasks: list = _fl([], "compare only: tasks to run (comma-separated); empty = [task]")
    mixers: list = _fl(["hydra", "mha"], "mixers to train (comma-separated registry names); more than one runs a "
                                          "comparison with the same budget")
    match_params: bool = _f(True, "comparison: give every mixer after the first an MLP sized so that its parameter "
                                  "count matches the first mixer's")
    output_dir: str = _f("runs/default", "directory for checkpoints, metrics, tokenizer, tables and plots")
    # ---------------------------------------------------------------- data
    train_file: str = _f("", "training data (classify: .csv/.tsv/.json/.jsonl/.parquet/.txt; mlm: text files, one "
                              "or several comma-separated; image: .npz with arrays 'images' and 'labels'); empty = the "
                              "embedded default (mlm, image) or an error (classify)")
    validation_file: str = _f("", "validation data, same format as --train-file; empty = a deterministic split of "
                                   "the training data (--validation-fraction)")
    validation_fraction: float = _f(0.05, "fraction of the training data held out when no --validation-file is given")
    text_column: str = _f("text", "classify: column holding the text")
    text_pair_column: str = _f("", "classify: optional second text column (sentence pairs)")
    label_column: str = _f("label", "classify: column holding the label (integers 0..num_labels-1, or strings)")
    num_labels: int = _f(0, "classify/image: number of classes; 0 = inferred from the training labels")
    max_corpus_chars: int = _f(3_000_000, "mlm: read at most this many characters of text (0 = no limit)")
    tokenizer: str = _f("wordpiece", "tokenizer trained on the corpus: wordpiece, bpe, or byte (byte-level, no "
                                     "training)", choices=TOKENIZERS)
    tokenizer_from: str = _f("", "reuse the tokenizer.json in this directory (e.g. RUN/<task>/tokenizer) instead of "
                                 "training one: the tokenizers library breaks ties in a different order in each process, "
                                 "so repeat a run exactly with the tokenizer it saved")
    vocab_size: int = _f(4096, "vocabulary size of a trained tokenizer")
    seq_len: int = _f(128, "sequence length (mlm: every example; classify: truncation length)")
    packing: bool = _f(False, "text tasks: pack the examples of each batch into one row instead of padding them to the "
                              "longest (each example is still mixed alone; no compute on padding): the same examples "
                              "and the same loss up to float rounding, faster when lengths vary (classify, listops)")
    mask_prob: float = _f(0.15, "mlm: fraction of tokens masked (80%% [MASK], 10%% random, 10%% kept), in training "
                                "and evaluation")
    synthetic_task: str = _f("mqar", "synthetic: mqar (non-causal multi-query associative recall), listops "
                                     "(nested MAX/MIN/MED/SM expressions), parity (bits; each position's label is the "
                                     "parity of its prefix and of its suffix) or s5 (elements of the symmetric group "
                                     "S5; the product of the prefix at odd, of the suffix at even positions)",
                             choices=SYNTHETIC_TASKS)
    synthetic_train_size: int = _f(20000, "synthetic: number of generated training examples")
    synthetic_val_size: int = _f(500, "synthetic: number of generated validation examples")
    mqar_pairs: int = _f(16, "mqar: key-value pairs per sequence")
    mqar_queries: int = _f(8, "mqar: queries per sequence")
    mqar_keys: int = _f(64, "mqar: size of the key vocabulary")
    mqar_values: int = _f(64, "mqar: size of the value vocabulary")
    state_len: int = _f(64, "parity, s5: tokens per sequence (between [CLS] and [SEP])")
    listops_min_len: int = _f(32, "listops: shortest expression, tokens")
    listops_max_len: int = _f(512, "listops: longest expression, tokens (up to a few thousand)")
    listops_max_depth: int = _f(6, "listops: deepest nesting")
    listops_max_args: int = _f(5, "listops: most arguments per operator")
    init_from: str = _f("", "classify: start from this masked-LM checkpoint or model directory (its tokenizer is "
                             "reused); empty = from scratch")
    # ---------------------------------------------------------------- model
    hidden_size: int = _f(128, "model width")
    num_layers: int = _f(2, "number of blocks")
    intermediate_size: int = _f(0, "MLP width after each mixer (0 = mixer-only blocks); with --match-params the "
                                   "later mixers get their own")
    d_state: int = _f(16, "Hydra/SSM state size")
    d_conv: int = _f(7, "Hydra convolution width (odd)")
    expand: int = _f(2, "Hydra expansion factor")
    headdim: int = _f(32, "Hydra head dimension")
    chunk_size: int = _f(64, "Hydra chunk size (capped by the sequence length; 64 is the fastest on CPUs, see "
                                "hydra-ssm bench-profile)")
    num_heads: int = _f(4, "attention heads (mha)")
    mixer_options: dict = field(default_factory=dict, metadata={
        "help": "mixer-specific option KEY=VALUE (repeatable; VALUE read as a Python literal, else a string, e.g. "
                "--mixer-option scan_impl=two_pass): each mixer of --mixers gets the options its class accepts; "
                "an option that none of them accepts is an error"})
    position_embeddings: str = _f("auto", "learned absolute position embeddings: on, off, or auto (on for mixers "
                                          "that are not position-aware, e.g. mha)", choices=("auto", "on", "off"))
    prenorm: bool = _f(True, "pre-norm blocks (False = the reference's post-norm)")
    dropout: float = _f(0.0, "dropout on embeddings, MLPs and classifier inputs")
    patch_size: int = _f(2, "image: patch size")
    pooling: str = _f("cls", "classification pooling: cls or mean", choices=("cls", "mean"))
    mixer_init: str = _f("bert", "init of the mixers' Linear layers: bert (the normal init of every other Linear, "
                                 "std 0.02, as the reference) or own (the layers' own init, PyTorch's default, as "
                                 "mamba_ssm's models keep)", choices=("bert", "own"))
    # ---------------------------------------------------------------- optimisation
    steps: int = _f(200, "optimizer steps per run")
    batch_size: int = _f(16, "global batch size (split over processes under torchrun)")
    lr: float = _f(2e-3, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_steps: int = _f(20, "linear warm-up steps, then cosine decay to 10%% of the peak")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    seed: int = _f(0, "random seed (data order, masking, initialisation, dropout)")
    bf16: bool = _f(False, "bfloat16 autocast for forward passes")
    device: str = _f("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int = _f(0, "torch CPU threads per process (0 = cores / processes)")
    context_parallel: int = _f(1, "processes that split each sequence between them (context parallelism, under "
                                  "torchrun: groups of this many consecutive ranks; data parallel across the groups); "
                                  "token-level tasks (mlm, synthetic mqar/parity/s5) and mixers that support it "
                                  "(hydra)")
    # ---------------------------------------------------------------- evaluation, logging, checkpoints
    eval_every: int = _f(50, "evaluate on the validation data every N steps (and at the end)")
    eval_batches: int = _f(8, "batches per evaluation (0 = the whole validation set)")
    checkpoint_every: int = _f(100, "write a checkpoint every N steps (and at the end; 0 = only at the end)")
    keep_checkpoints: int = _f(1, "checkpoints kept on disk")
    resume: bool = _f(False, "continue from the latest checkpoint in --output-dir (exactly where it stopped)")
    progress: bool = _f(True, "show a progress bar")
    plot: bool = _f(True, "plot learning curves to PNG")
    debug_step_delay: float = _f(0.0, "testing: sleep this many seconds after each step")

    # ---------------------------------------------------------------- helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def validate(self) -> "TrainConfig":
        def need(cond, msg):
            if not cond:
                raise UsageError(msg)

        for t in [self.task, *self.tasks]:
            need(t in TASKS, f"unknown task {t!r}; choose from {', '.join(TASKS)}")
        need(len(self.mixers) > 0, "--mixers must name at least one mixer")
        from ..mixers import available_mixers
        for m in self.mixers:
            need(m in available_mixers(), f"unknown mixer {m!r}; registered mixers: {', '.join(available_mixers())}")
        need(len(set(self.mixers)) == len(self.mixers), f"--mixers lists a mixer twice: {self.mixers}")
        check_mixer_options(self.mixer_options, self.mixers)
        positive = ("vocab_size", "seq_len", "hidden_size", "num_layers", "d_state", "d_conv", "expand", "headdim",
                    "chunk_size", "num_heads", "patch_size", "steps", "batch_size", "synthetic_train_size",
                    "synthetic_val_size", "state_len", "mqar_pairs", "mqar_queries", "mqar_keys", "mqar_values", "listops_min_len",
                    "listops_max_len", "listops_max_depth", "listops_max_args", "eval_every")
        for name in positive:
            need(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("intermediate_size", "num_labels", "max_corpus_chars", "warmup_steps", "eval_batches",
                     "checkpoint_every", "threads", "weight_decay", "grad_clip", "dropout", "debug_step_delay"):
            need(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        need(self.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.context_parallel >= 1, f"--context-parallel must be >= 1, got {self.context_parallel}")
        if self.context_parallel > 1:
            from ..mixers import get_mixer_class
            tasks = self.tasks or [self.task]
            for t in tasks:
                pooled = t in ("classify", "image") or (t == "synthetic" and self.synthetic_task not in
                                                                TOKEN_LEVEL_SYNTHETIC)
                what = f"synthetic --synthetic-task {self.synthetic_task}" if t == "synthetic" else t
                need(not pooled, f"--context-parallel {self.context_parallel}: --task {what} classifies whole "
                                 f"sequences; context parallelism trains the token-level tasks (mlm, synthetic "
                                 f"{'/'.join(TOKEN_LEVEL_SYNTHETIC)})")
            for m in self.mixers:
                cls = get_mixer_class(m)
                able = [n for n in available_mixers() if get_mixer_class(n).context_parallel]
                need(cls.context_parallel, f"--context-parallel {self.context_parallel}: mixer {m!r} "
                                           f"({cls.__name__}) cannot run context-parallel; choose --mixers among: "
                                           + ", ".join(able))
        need(self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(0 < self.mask_prob < 1, f"--mask-prob must be in (0, 1), got {self.mask_prob}")
        need(0 <= self.validation_fraction < 1, f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        need(self.dropout < 1, f"--dropout must be < 1, got {self.dropout}")
        need(self.d_conv % 2 == 1, f"--d-conv must be odd, got {self.d_conv}")
        need(self.listops_min_len <= self.listops_max_len,
             f"--listops-min-len ({self.listops_min_len}) must be <= --listops-max-len ({self.listops_max_len})")
        need(self.mqar_queries <= self.mqar_pairs, f"--mqar-queries ({self.mqar_queries}) must be <= --mqar-pairs ({self.mqar_pairs})")
        need(self.mqar_pairs <= self.mqar_keys, f"--mqar-pairs ({self.mqar_pairs}) must be <= --mqar-keys ({self.mqar_keys})")
        if self.tokenizer != "byte":
            need(self.vocab_size >= 300, f"--vocab-size must be >= 300 for a trained tokenizer, got {self.vocab_size}")
        for name in ("train_file", "validation_file", "init_from", "tokenizer_from"):
            for p in _split_paths(getattr(self, name)):
                need(os.path.exists(p), f"--{name.replace('_', '-')}: no such file or directory: {p}")
        need(self.output_dir.strip() != "", "--output-dir must name a directory, got ''")
        tasks = set(self.tasks or [self.task])
        for t in sorted(tasks & {"mlm", "classify"}):  # [CLS] text [SEP] (and [SEP] pair [SEP])
            least = 5 if t == "classify" and self.text_pair_column else 3
            need(self.seq_len >= least, f"--seq-len {self.seq_len} is too short for --task {t}: it needs room for "
                                        f"[CLS], [SEP] and at least one token per text (>= {least})")
        need(not (self.packing and "image" in tasks), "--packing packs text examples of varying lengths; --task image "
                                                      "has fixed-size images: leave --packing off")
        need(not (self.packing and self.context_parallel > 1),
             f"--packing and --context-parallel {self.context_parallel} cannot be combined: a packed row holds whole "
             f"sequences, context parallelism splits each sequence across processes; choose one")
        if tasks & {"classify", "image"}:  # tables and arrays are read from one file each
            for name in ("train_file", "validation_file"):
                for p in _split_paths(getattr(self, name)):
                    need(not os.path.isdir(p), f"--{name.replace('_', '-')}: {p} is a directory; --task "
                                               f"{'/'.join(sorted(tasks & {'classify', 'image'}))} reads one file")
        for name, inside in (("tokenizer_from", "tokenizer.json"), ("init_from", "config.json")):
            p = getattr(self, name)
            flag = f"--{name.replace('_', '-')}"
            if p:
                need(os.path.isdir(p), f"{flag}: {p} is not a directory (expected one holding {inside})")
                need(os.path.isfile(os.path.join(p, inside)), f"{flag}: {p} has no {inside}")
        return self


def _split_paths(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()] if value else []


FIELDS = {f.name: f for f in fields(TrainConfig)}


def coerce(name: str, value: Any) -> Any:
    """Convert a value from a file or the command line to the field's type, or raise UsageError."""
    if name not in FIELDS:
        close = [n for n in FIELDS if n.startswith(name[:3])]
        raise UsageError(f"unknown option {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    f = FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = type(default)
    flag = "--" + name.replace("_", "-")
    try:
        if kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError
        elif kind is dict:
            out = mixer_options(value)  # the flag is --mixer-option, given once per option
        elif kind is list:
            if isinstance(value, str):
                out = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                out = [str(v) for v in value]
            else:
                raise ValueError
        elif kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            out = str(value)
    except (ValueError, TypeError):
        raise UsageError(f"{flag}: expected {kind.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise UsageError(f"{flag}: {out!r} is not one of {', '.join(choices)}")
    return out


def parse_option(text: str, flag: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (KEY, VALUE read as a Python literal, or the string itself when it is not one):
    ``"allow_neg_eigval=True"`` -> ("allow_neg_eigval", True), ``"scan_impl=two_pass"`` -> ("scan_impl", "two_pass")."""
    key, eq, raw = str(text).partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise UsageError(f"{flag}: expected KEY=VALUE with KEY an option name, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw.strip()
    return key, value


def mixer_options(value: Any, flag: str = "--mixer-option") -> dict:
    """Mixer options from the command line (a list of ``KEY=VALUE``), a config file or a saved run (a mapping),
    as a dict of JSON values (tuples become lists), so that a saved run reads back equal."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [parse_option(v, flag) for v in value]
    elif isinstance(value, str):
        items = [parse_option(value, flag)]
    else:
        raise UsageError(f"{flag}: expected KEY=VALUE options or a mapping, got {value!r}")
    out = {}
    for key, v in items:
        if key in out and out[key] != v:
            raise UsageError(f"{flag}: {key} is given twice ({out[key]!r} and {v!r})")
        try:
            out[key] = json.loads(json.dumps(v, allow_nan=False))
        except (TypeError, ValueError):
            raise UsageError(f"{flag} {key}: {v!r} is not a plain value (a number, string, bool, None or a list of "
                             f"them)") from None
    return out


def check_mixer_options(options: dict, mixers: list[str]) -> None:
    """UsageError for an option that no mixer of ``mixers`` accepts (each mixer gets only those it accepts:
    `options_for`), naming the options they do accept."""
    from ..mixers import get_mixer_class
    from ..mixers.registry import accepted_options

    accepted = [accepted_options(get_mixer_class(m)) for m in mixers]
    if any(a is None for a in accepted):  # a mixer that takes **kwargs checks its options itself when built
        return
    known = set().union(*accepted)
    for key in options:
        if key not in known:
            from .._checks import did_you_mean
            raise UsageError(f"--mixer-option {key}: no mixer of --mixers ({', '.join(mixers)}) accepts it (they "
                             f"accept: {', '.join(sorted(known))}){did_you_mean(key, known)}")


def options_for(options: dict, mixer: str) -> dict:
    """The mixer options of ``options`` that ``mixer``'s class accepts (all of them for a **kwargs mixer)."""
    from ..mixers import get_mixer_class
    from ..mixers.registry import accepted_options

    accepted = accepted_options(get_mixer_class(mixer))
    return {k: v for k, v in options.items() if accepted is None or k in accepted}


def load_config_file(path: str) -> dict:
    if os.path.isdir(path):
        raise UsageError(f"--config: {path} is a directory; expected a .yaml, .yml, .toml or .json file")
    if not os.path.isfile(path):
        raise UsageError(f"--config: no such file: {path}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if path.endswith(".toml"):
            import tomllib
            data = tomllib.loads(raw.decode("utf-8"))
        elif path.endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(raw.decode("utf-8"))
        elif path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            raise UsageError(f"--config: {path}: use a .yaml, .yml, .toml or .json file")
    except UsageError:
        raise
    except UnicodeDecodeError as err:
        raise UsageError(f"--config: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except Exception as err:  # yaml / toml / json syntax errors
        msg = str(err).replace("\n", " ")
        raise UsageError(f"--config: cannot parse {path}: {msg}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of option names to values")
    # allow nested sections ({model: {...}, train: {...}}): flatten one level
    flat: dict = {}
    for k, v in data.items():
        if isinstance(v, dict) and k.replace("-", "_") not in FIELDS:
            flat.update(v)
        else:
            flat[k] = v
    return {k.replace("-", "_"): v for k, v in flat.items()}


def build_config(file_values: dict, overrides: dict) -> TrainConfig:
    values = {}
    for source in (file_values, overrides):
        for k, v in source.items():
            values[k] = coerce(k, v)
    return TrainConfig(**values).validate()


def config_from_json(path: str) -> TrainConfig:
    with open(path) as fh:
        data = json.load(fh)
    return TrainConfig(**{k: v for k, v in data.items() if k in FIELDS})
