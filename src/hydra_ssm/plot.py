"""Heatmaps of the matrices that the mixers apply: ``|M|`` per head, per type, DI vs SAM; and plots of
trained models and runs.

    python -m hydra_ssm.plot --out docs/img                      # every matrix type, random weights and input
    python -m hydra_ssm.plot --types toeplitz --forms sam --length 128
    python -m hydra_ssm.plot --types cauchy --forms di --checkpoint layer.safetensors --prefix encoder.0.mixer.
    hydra-ssm plot --model runs/default/mlm/hydra/model          # |M| of every layer of a saved model
    hydra-ssm plot --run runs/default                            # the learning curves of a finished run

One PNG per type (``mixer_<type>.png``): one row per form, one column per
head. A checkpoint is a state_dict saved with safetensors or ``torch.save``
(loaded with ``weights_only=True``); ``--prefix`` selects the keys of one layer.
``--model DIR`` (a saved model or checkpoint directory) writes ``model_mixers.png``:
one row per layer, the matrices its mixers apply to a sample input (``--text``
through the saved tokenizer, else random tokens or pixels). ``--run DIR`` (an
output directory with results.json, or one run with result.json) writes
``curves.png``, the same plot `hydra-ssm train` writes.
Needs matplotlib (``pip install 'hydra-ssm[plot]'``); --model and --run need the ``train`` extra.
"""

from __future__ import annotations

import argparse
import os
import sys


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("hydra_ssm.plot needs matplotlib: pip install 'hydra-ssm[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_state_dict(path: str) -> dict:
    """A state_dict from a .safetensors file or a torch.save file (weights only)."""
    import torch

    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SystemExit("reading .safetensors needs the safetensors package: pip install safetensors") from None
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise SystemExit(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    return sd


def _heatmaps(plt, rows: list, title: str, path: str, dpi: int) -> str:
    """One row of panels per ``(row label, M)``, ``M`` a (heads, L, L) tensor of |entries|."""
    import torch

    nh = max(M.shape[0] for _, M in rows)
    fig, axes = plt.subplots(len(rows), nh, figsize=(1.9 * nh, 2.0 * len(rows)), squeeze=False)
    for r, (label, M) in enumerate(rows):
        for h in range(nh):
            ax = axes[r][h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h < M.shape[0]:
                # colour scale clipped at the 99th percentile of the off-diagonal entries,
                # so that the identity/diagonal term does not hide the structure
                off = M[h][~torch.eye(M.shape[-1], dtype=torch.bool)]
                vmax = (float(torch.quantile(off, 0.99)) if off.numel() else 0.0) or None
                ax.imshow(M[h].numpy(), cmap="viridis", interpolation="nearest", vmin=0, vmax=vmax)
                ax.set_title(f"{label} head {h}", fontsize=8)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def model_matrices(model_dir: str, text: str = "", length: int = 64, seed: int = 0) -> tuple[str, list]:
    """(mixer name, [(layer name, |M| (heads, L, L))]) of a saved model on a sample input: ``text`` through the
    directory's tokenizer (as pipelines encode it), else ``length`` random tokens, or random pixels for images.
    Each mixer's matrix is taken on the input that mixer receives in the forward pass."""
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from . import models
    from .mixers import SequenceMixer

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(model_dir)
    cls = getattr(models, (config.architectures or ["HydraModel"])[0], None)
    if cls is None:
        raise ValueError(f"{model_dir}: {config.architectures[0]} is not a hydra-ssm model class")
    model = cls.from_pretrained(model_dir).eval()
    gen = torch.Generator().manual_seed(seed)
    if getattr(config, "image_size", None) and "Image" in cls.__name__:
        inputs = {"pixel_values": torch.randn(1, config.num_channels, config.image_size, config.image_size,
                                              generator=gen)}
    elif text and os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        inputs = {"input_ids": tok(text, truncation=True, return_tensors="pt")["input_ids"]}
    else:
        n = min(length, config.max_position_embeddings)
        inputs = {"input_ids": torch.randint(5, config.vocab_size, (1, n), generator=gen)}
    mixers = [(name, m) for name, m in model.named_modules() if isinstance(m, SequenceMixer)]
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in mixers]
    try:
        with torch.no_grad():
            model(**inputs)
            rows = [(f"layer {k}", m.materialize(seen[name])[0].abs().float())
                    for k, (name, m) in enumerate(mixers) if name in seen]
    finally:
        for h in hooks:
            h.remove()
    return config.matrix_mixer_type, rows


def run_results(run_dir: str) -> list[dict]:
    """The result rows of an output directory (results.json) or of one run (result.json), with each
    ``run_dir`` found under ``run_dir`` when the directory was moved after training."""
    import json

    for name, key in (("results.json", "results"), ("result.json", None)):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            with open(path) as fh:
                data = json.load(fh)
            rows = data[key] if key else [data]
            for r in rows:
                here = run_dir if key is None else os.path.join(run_dir, r["task"], r["mixer"])
                if os.path.isfile(os.path.join(here, "metrics.jsonl")):
                    r["run_dir"] = here
            return rows
    raise FileNotFoundError(f"{run_dir} has no results.json (an output directory) or result.json (one run): "
                            "is the run finished?")


def main(argv: list[str] | None = None) -> int:
    import torch

    from .mixers import MatrixMixer, matrix_mixer_types

    p = argparse.ArgumentParser(prog="hydra-ssm plot", description=__doc__.split("\n\n")[0])
    p.add_argument("--types", nargs="+", default=None, help=f"matrix types (default: all of {matrix_mixer_types()})")
    p.add_argument("--forms", nargs="+", choices=["di", "sam"], default=["di", "sam"])
    p.add_argument("--length", type=int, default=64, help="sequence length of the random input")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--headdim", type=int, default=32)
    p.add_argument("--qk-dim", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=None, help="default: --length")
    p.add_argument("--d-conv", type=int, default=7)
    p.add_argument("--max-heads", type=int, default=4, help="plot at most this many heads")
    p.add_argument("--checkpoint", default=None, help="state_dict of one layer (.safetensors or torch.save)")
    p.add_argument("--prefix", default="", help="key prefix of the layer inside the checkpoint")
    p.add_argument("--model", default=None, metavar="DIR", help="a saved model or checkpoint directory: |M| of "
                   "each of its layers on a sample input (model_mixers.png)")
    p.add_argument("--text", default="", help="--model: the sample input, encoded by the saved tokenizer "
                   "(default: --length random tokens)")
    p.add_argument("--run", default=None, metavar="DIR", help="a finished run (output directory or one "
                   "RUN/<task>/<mixer>): its learning curves (curves.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".", help="output directory")
    p.add_argument("--dpi", type=int, default=60)
    args = p.parse_args(argv)

    if args.model or args.run:
        if args.types or args.checkpoint:
            p.error("--model/--run plot a trained model or run; --types/--checkpoint plot one layer")
        plt = _pyplot()
        os.makedirs(args.out, exist_ok=True)
        written = []
        if args.model:
            if not os.path.isfile(os.path.join(args.model, "config.json")):
                p.error(f"--model: {args.model} is not a model directory (no config.json)")
            try:
                mixer, rows = model_matrices(args.model, args.text, args.length, args.seed)
            except ImportError as err:
                p.error(f"--model needs the 'train' extra (pip install 'hydra-ssm[train]'): {err}")
            except (ValueError, NotImplementedError) as err:
                p.error(f"--model: {err}")
            rows = [(label, M[: args.max_heads]) for label, M in rows]
            title = f"|M| of {mixer} layers: {args.model}, L = {rows[0][1].shape[-1]}" if rows else ""
            written.append(_heatmaps(plt, rows, title, os.path.join(args.out, "model_mixers.png"), args.dpi))
        if args.run:
            from .train.runner import plot_curves

            try:
                results = run_results(args.run)
            except FileNotFoundError as err:
                p.error(f"--run: {err}")
            written.append(plot_curves(results, os.path.join(args.out, "curves.png")))
        for path in written:
            print(path)
        return 0

    types = args.types or matrix_mixer_types()
    unknown = [t for t in types if t not in matrix_mixer_types()]
    if unknown:
        p.error(f"unknown matrix type(s) {unknown}; known: {matrix_mixer_types()}")
    if args.checkpoint and (len(types) != 1 or len(args.forms) != 1):
        p.error("--checkpoint needs exactly one --types and one --forms")
    state = None
    if args.checkpoint:
        state = load_state_dict(args.checkpoint)
        if args.prefix:
            state = {k[len(args.prefix):]: v for k, v in state.items() if k.startswith(args.prefix)}
            if not state:
                p.error(f"no key of {args.checkpoint} starts with {args.prefix!r}")
    plt = _pyplot()
    os.makedirs(args.out, exist_ok=True)
    max_len = args.max_seq_len or args.length
    torch.manual_seed(args.seed)
    u = torch.randn(1, args.length, args.d_model)
    written = []
    for t in types:
        rows = []
        for form in args.forms:
            torch.manual_seed(args.seed)
            try:
                m = MatrixMixer(t, form == "sam", args.d_model, args.qk_dim, max_seq_len=max_len, d_conv=args.d_conv,
                                expand=args.expand, headdim=args.headdim)
            except ValueError as e:
                if "has no" in str(e):
                    continue  # e.g. dense has no data-dependent form
                raise
            if state is not None:
                m.load_state_dict(state, strict=True)
            with torch.no_grad():
                M = m.materialize(u)[0].abs().float()
            rows.append((form, M[: args.max_heads]))
        if not rows:
            continue
        rows = [(form.upper(), M) for form, M in rows]
        path = _heatmaps(plt, rows, f"|M|: {t}", os.path.join(args.out, f"mixer_{t}.png"), args.dpi)
        written.append(path)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
