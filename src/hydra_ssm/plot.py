"""Heatmaps of the matrices that the mixers apply: ``|M|`` per head, per type, DI vs SAM.

    python -m hydra_ssm.plot --out docs/img                      # every matrix type, random weights and input
    python -m hydra_ssm.plot --types toeplitz --forms sam --length 128
    python -m hydra_ssm.plot --types cauchy --forms di --checkpoint layer.safetensors --prefix encoder.0.mixer.

One PNG per type (``mixer_<type>.png``): one row per form, one column per
head. A checkpoint is a state_dict saved with safetensors or ``torch.save``
(loaded with ``weights_only=True``); ``--prefix`` selects the keys of one layer.
Needs matplotlib (``pip install 'hydra-ssm[plot]'``).
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".", help="output directory")
    p.add_argument("--dpi", type=int, default=60)
    args = p.parse_args(argv)

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
        nh = max(M.shape[0] for _, M in rows)
        fig, axes = plt.subplots(len(rows), nh, figsize=(1.9 * nh, 2.0 * len(rows)), squeeze=False)
        for r, (form, M) in enumerate(rows):
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
                    ax.set_title(f"{form.upper()} head {h}", fontsize=8)
                else:
                    ax.axis("off")
        fig.suptitle(f"|M|: {t}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(args.out, f"mixer_{t}.png")
        fig.savefig(path, dpi=args.dpi)
        plt.close(fig)
        written.append(path)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
