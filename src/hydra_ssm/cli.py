"""The ``hydra-ssm`` command line.

    hydra-ssm train       pretrain / fine-tune (default: Hydra vs attention MLM on the interpreter's own text)
    hydra-ssm compare     the same for a list of mixers and tasks
    hydra-ssm evaluate    evaluate a saved model on its task's validation data
    hydra-ssm study       the matrix-mixer study: a grid of runs and its report (docs/results.md)
    hydra-ssm bench | bench-mixers | bench-packing | bench-stream | bench-context-parallel | bench-state-tracking |
                          bench-profile | plot
                          benchmark and plotting scripts

Bad options and bad data stop with one line on stderr (exit status 2) before
any training starts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import MISSING, fields

PROG = "hydra-ssm"
PASSTHROUGH = {
    "bench": ("hydra_ssm.bench.hydra", "benchmark the Hydra layer (hydra_ssm.bench.hydra)"),
    "bench-mixers": ("hydra_ssm.bench.mixers", "benchmark the matrix-mixer family (hydra_ssm.bench.mixers)"),
    "bench-packing": ("hydra_ssm.bench.packing", "packed (cu_seqlens) against padded batches of skewed lengths "
                                                 "(hydra_ssm.bench.packing)"),
    "bench-context-parallel": ("hydra_ssm.bench.context_parallel", "benchmark one Hydra layer split over 1, 2, 4 "
                               "processes: time, memory per rank, bytes exchanged (hydra_ssm.bench.context_parallel)"),
    "bench-stream": ("hydra_ssm.bench.stream", "working memory of Hydra.stream against L (hydra_ssm.bench.stream)"),
    "bench-profile": ("hydra_ssm.bench.profile", "where the time goes: torch.profiler tables of the Hydra layer and "
                      "of the main job's training step (hydra_ssm.bench.profile)"),
    "bench-state-tracking": ("hydra_ssm.bench.state_tracking", "which mixers learn parity and the S5 word problem "
                             "at which length: a seeded study of tiny trained models (hydra_ssm.bench.state_tracking)"),
    "study": ("hydra_ssm.study", "the matrix-mixer study: a declared grid of runs (mixers x forms x tasks x rates "
                                 "x seeds), resumable, and its report with figures (hydra_ssm.study)"),
    "plot": ("hydra_ssm.plot", "plots from benchmark/training outputs (hydra_ssm.plot)"),
}


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


# the options of `train` that `evaluate` reads; the others (model, optimisation, ...) come from the saved run
EVALUATE_OPTIONS = ("validation_file", "text_column", "text_pair_column", "label_column", "mask_prob", "batch_size",
                    "eval_batches", "device", "threads", "bf16", "packing")


def _add_train_options(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One ``--option`` per TrainConfig field (only ``names`` when given), plus ``--config`` for the full set."""
    from .train.config import TrainConfig

    if names is None:
        p.add_argument("--config", metavar="FILE", help="YAML (.yaml/.yml), TOML or JSON file of options (names as "
                       "below, with _ or -); command-line options override it")
    groups = {}
    for f in fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        section = {"task": "what to run", "train_file": "data", "hidden_size": "model", "steps": "optimisation",
                   "eval_every": "evaluation, logging, checkpoints"}.get(f.name)
        if section:
            groups["cur"] = p.add_argument_group(section)
        g = groups.get("cur", p)
        flag = "--" + f.name.replace("_", "-")
        shown = ",".join(default) if isinstance(default, list) else default
        help_ = f.metadata["help"] + (f" (default: {shown})" if names is None else " (default: the saved run's value)")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if isinstance(default, bool):
            g.add_argument(flag, nargs="?", const="true", metavar="BOOL", **kw)
        elif isinstance(default, dict):  # --mixer-option KEY=VALUE, once per option
            g.add_argument(flag.removesuffix("s"), action="append", metavar="KEY=VALUE", **kw)
        else:
            choices = f.metadata.get("choices")
            g.add_argument(flag, metavar="{" + ",".join(choices) + "}" if choices else f.name.split("_")[-1].upper(), **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train, fine-tune, compare and benchmark Hydra and the "
                                     "matrix-mixer family. 'hydra-ssm train' with no options pretrains a small Hydra "
                                     "encoder and a matched attention encoder on text shipped with Python and prints "
                                     "a comparison table.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, desc in (("train", "train one or more mixers on a task (default: hydra vs mha, masked LM on the "
                                 "interpreter's own text)"),
                       ("compare", "train several mixers on several tasks with one budget and tabulate them")):
        p = sub.add_parser(name, help=desc, description=desc)  # each option's help names its default itself
        _add_train_options(p)
    p = sub.add_parser("evaluate", help="evaluate a saved model on its task's validation data",
                       description="Evaluate a saved model directory (RUN/<task>/<mixer>/model or a checkpoint) on "
                                   "the validation data of the task it was trained on, or on --validation-file; "
                                   "prints JSON. Texts are encoded by the model's saved tokenizer with truncation "
                                   "to its model_max_length, as pipelines do with truncation=True. The options "
                                   "below override the saved run's; everything else comes from its "
                                   "train_config.json.")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json + model.safetensors)")
    _add_train_options(p, EVALUATE_OPTIONS)
    for name, (_, desc) in PASSTHROUGH.items():
        sub.add_parser(name, help=desc, add_help=False, description=desc)
    return parser


def _overrides(ns: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(ns).items() if k not in ("command", "config", "model")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        module, _ = PASSTHROUGH[argv[0]]
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            return _fail(f"'{argv[0]}' needs {module}, which cannot be imported here ({err}); "
                         "is this an older install? try: pip install -e '.[train]'")
        return mod.main(argv[1:]) or 0
    parser = build_parser()
    ns, unknown = parser.parse_known_args(argv)
    if ns.command is None and not unknown:
        parser.print_help()
        return 0
    if unknown:
        flags = [a for a in unknown if a.startswith("-")] or unknown
        if ns.command == "evaluate":
            from .train.config import FIELDS
            training = [a for a in flags if a.lstrip("-").split("=")[0].replace("-", "_") in FIELDS
                        or a.lstrip("-").split("=")[0].replace("-", "_") + "s" in FIELDS]  # --mixer-option
            if training:
                return _fail(f"evaluate does not take {', '.join(training)} (an option of training: the saved run's "
                             f"value is used); it takes --model and "
                             + ", ".join("--" + n.replace("_", "-") for n in EVALUATE_OPTIONS))
        hint = f"{PROG} {ns.command} --help" if ns.command else f"{PROG} --help"
        return _fail(f"unrecognized arguments: {' '.join(unknown)} (see '{hint}')")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")        # nothing is ever downloaded
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from .train.config import UsageError, build_config, load_config_file
    except ImportError as err:
        return _fail(f"training needs the 'train' extra: pip install 'hydra-ssm[train]' ({err})")
    try:
        file_values = load_config_file(ns.config) if getattr(ns, "config", None) else {}
        if ns.command == "evaluate":
            from .train.config import coerce
            from .train.runner import evaluate_model

            over = {k: coerce(k, v) for k, v in _overrides(ns).items()}
            print(json.dumps(evaluate_model(ns.model, over), indent=2))
            return 0
        cfg = build_config(file_values, _overrides(ns))
        from .train.runner import run

        run(cfg)
        return 0
    except UsageError as err:
        return _fail(str(err))
    except ImportError as err:
        return _fail(f"missing dependency: {err}; install the 'train' extra: pip install 'hydra-ssm[train]'")
    except FloatingPointError as err:
        return _fail(str(err), 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
