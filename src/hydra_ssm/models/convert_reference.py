"""Convert a checkpoint of the Hydra paper's reference BERT code into a transformers directory.

The reference trains ``BertForMaskedLM`` (or ``BertForSequenceClassification``
for GLUE) under a trainer that prefixes every key with ``model.``. Its keys::

    model.bert.embeddings.{word,token_type,position}_embeddings.weight, .LayerNorm.*
    model.bert.encoder.layer.{i}.layer.mixer.*       (the Hydra / matrix mixer, same names as ours)
    model.bert.encoder.layer.{i}.layer.norm.*        (the block LayerNorm)
    model.bert.encoder.norm_f.*                      (pre-norm models only)
    model.bert.pooler.dense.*, model.classifier.*    (classification models)
    model.cls.predictions.transform.{dense,LayerNorm}.*, model.cls.predictions.decoder.*

are renamed to :class:`HydraForMaskedLM` (or :class:`HydraForSequenceClassification`)
keys, the configuration is inferred from the tensor shapes (completed by an
optional config.json or run yaml), the weights are loaded strictly and the
result is written with ``save_pretrained`` (safetensors).

Files are read with ``torch.load(..., weights_only=True)`` or safetensors only:
nothing in a checkpoint is ever executed. A file that needs full unpickling
(e.g. a trainer checkpoint holding optimizer or timestamp objects) is refused
with instructions.

Command line::

    python -m hydra_ssm.models.convert_reference CHECKPOINT OUTPUT_DIR [--yaml RUN.yaml] [--config config.json]
        [--set key=value ...] [--task auto|masked-lm|sequence-classification]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import sys

import torch

from .configuration_hydra import HydraConfig
from .modeling_hydra import HydraForMaskedLM, HydraForSequenceClassification

logger = logging.getLogger(__name__)

TRAINER_PREFIX = "model."

# Config values of the reference when a run does not override them: bert-base-uncased's
# config updated by the reference's BertConfig defaults (vocabulary padded to a multiple of 8).
REFERENCE_DEFAULTS = dict(
    vocab_size=30528, hidden_size=768, num_hidden_layers=12, max_position_embeddings=512, type_vocab_size=2,
    pad_token_id=0, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-12, initializer_range=0.02, use_position_embeddings=False, matrix_mixer_type="hydra",
    is_prenorm=False, d_conv=7, expand=2, chunk_size=256, d_state=64, is_data_dependent=True, qk_dim=16,
    headdim=64, num_attention_heads=12, intermediate_size=0, block_norm_eps=1e-5, pooling="cls",
)

# (reference pattern, our replacement); the first match wins. A replacement of None drops the key.
KEY_RULES = [
    (r"^bert\.embeddings\.(position_ids|token_type_ids)$", None),  # buffers
    (r"^bert\.embeddings\.", "hydra.embeddings."),
    (r"^bert\.encoder\.layer\.(\d+)\.layer\.mixer\.", r"hydra.encoder.layers.\1.mixer."),
    (r"^bert\.encoder\.layer\.(\d+)\.layer\.norm\.", r"hydra.encoder.layers.\1.norm."),
    (r"^bert\.encoder\.norm_f\.", "hydra.encoder.norm_f."),
    (r"^bert\.pooler\.dense\.", "hydra.pooler.dense."),
    (r"^cls\.predictions\.transform\.dense\.", "lm_head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "lm_head.layer_norm."),
    (r"^cls\.predictions\.decoder\.", "lm_head.decoder."),
    (r"^cls\.predictions\.bias$", "lm_head.decoder.bias"),
    (r"^classifier\.", "classifier."),
]

TASKS = {"masked-lm": HydraForMaskedLM, "sequence-classification": HydraForSequenceClassification}

# keys of PretrainedConfig that a reference config.json may carry and that we keep
_GENERIC_CONFIG_KEYS = {"num_labels", "id2label", "label2id", "problem_type", "classifier_dropout"}


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why and what to do."""


# ---------------------------------------------------------------------------- reading
def load_reference_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a reference checkpoint safely and return its model tensors with the trainer prefix removed.

    Accepts a safetensors file, or a torch file holding a state dict, either bare
    or nested as ``{"state": {"model": ...}}`` (the trainer's layout) or ``{"state_dict": ...}``.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError, ... depending on the torch version
            raise ConversionError(
                f"{path} cannot be read with torch.load(weights_only=True): it holds Python objects other than "
                f"tensors and plain containers (a full trainer checkpoint with optimizer/timestamp/RNG state?).\n"
                f"  This converter never unpickles arbitrary code. If you trust the file, extract the model weights "
                f"in a separate step, e.g.\n"
                f"    python -c \"import torch; ck = torch.load('{path}', weights_only=False); "
                f"torch.save(ck['state']['model'], 'model_weights.pt')\"\n"
                f"  and convert model_weights.pt.\n  (torch said: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
            ) from None
    for _ in range(3):  # unwrap the trainer's nesting
        if isinstance(obj, dict) and isinstance(obj.get("state"), dict) and "model" in obj["state"]:
            obj = obj["state"]["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConversionError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    return {(k[len(TRAINER_PREFIX):] if k.startswith(TRAINER_PREFIX) else k): v for k, v in tensors.items()}


def read_run_yaml(path: str) -> dict:
    """``model.model_config`` of a reference run yaml, with ``${name}`` resolved from the top level."""
    import yaml  # pyyaml; only needed for this option

    with open(path) as f:
        run = yaml.safe_load(f) or {}
    model_config = dict(((run.get("model") or {}).get("model_config")) or {})

    def resolve(value):
        if isinstance(value, str):
            m = re.fullmatch(r"\$\{(\w+)\}", value.strip())
            if m and m.group(1) in run:
                return run[m.group(1)]
        return value

    return {k: resolve(v) for k, v in model_config.items()}


def read_config_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- mapping
def rename_reference_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our names for the reference's keys; returns (renamed, unknown reference keys)."""
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, repl in KEY_RULES:
            if re.search(pattern, key):
                if repl is not None:
                    renamed[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    return renamed, unknown


def _mixer(sd: dict, i: int, name: str):
    return sd.get(f"bert.encoder.layer.{i}.layer.mixer.{name}")


def infer_config_from_state_dict(sd: dict[str, torch.Tensor], ngroups: int = 1) -> dict:
    """Every config value the reference's tensor shapes determine."""
    out: dict = {}
    word = sd.get("bert.embeddings.word_embeddings.weight")
    if word is None:
        raise ConversionError("not a reference BERT checkpoint: 'bert.embeddings.word_embeddings.weight' is missing "
                              f"(first keys: {sorted(sd)[:5]})")
    out["vocab_size"], out["hidden_size"] = map(int, word.shape)
    d_model = out["hidden_size"]
    tt = sd.get("bert.embeddings.token_type_embeddings.weight")
    out["type_vocab_size"] = int(tt.shape[0]) if tt is not None else 0
    pos = sd.get("bert.embeddings.position_embeddings.weight")
    out["use_position_embeddings"] = pos is not None
    if pos is not None:
        out["max_position_embeddings"] = int(pos.shape[0])
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
    if not layers:
        raise ConversionError("no encoder layers ('bert.encoder.layer.{i}.*') in the checkpoint")
    if layers != set(range(max(layers) + 1)):
        raise ConversionError(f"encoder layer indices are not contiguous: {sorted(layers)}")
    out["num_hidden_layers"] = max(layers) + 1
    out["is_prenorm"] = "bert.encoder.norm_f.weight" in sd
    if "classifier.weight" in sd:
        out["num_labels"] = int(sd["classifier.weight"].shape[0])

    # mixer shapes (layer 0 is representative: the reference deep-copies one layer)
    out_proj, conv = _mixer(sd, 0, "out_proj.weight"), _mixer(sd, 0, "conv1d.weight")
    options: dict = {}
    if out_proj is not None:
        d_inner = int(out_proj.shape[1])
        if d_inner % d_model:
            raise ConversionError(f"mixer width {d_inner} is not a multiple of hidden_size {d_model}")
        out["expand"] = d_inner // d_model
    if conv is not None:
        out["d_conv"] = int(conv.shape[-1])
    is_hydra = all(_mixer(sd, 0, n) is not None for n in ("A_log", "dt_bias", "fc_D.weight", "in_proj.weight",
                                                         "out_proj.weight", "conv1d.weight"))
    if is_hydra:
        out["matrix_mixer_type"] = "hydra"
        nheads = int(_mixer(sd, 0, "A_log").shape[0])
        d_inner = out["expand"] * d_model
        if d_inner % nheads:
            raise ConversionError(f"Hydra mixer: width {d_inner} is not divisible by its {nheads} heads")
        out["headdim"] = d_inner // nheads
        bc = int(conv.shape[0]) - d_inner  # conv channels: x, then B_f, C_f, B_b, C_b
        if bc <= 0 or bc % (4 * ngroups):
            raise ConversionError(f"Hydra mixer: conv1d has {int(conv.shape[0])} channels, which does not fit "
                                  f"width {d_inner} + 4 * ngroups({ngroups}) * d_state")
        out["d_state"] = bc // (4 * ngroups)
        if _mixer(sd, 0, "in_proj.bias") is not None:
            options["bias"] = True
        if _mixer(sd, 0, "conv1d.bias") is None:
            options["conv_bias"] = False
        if _mixer(sd, 0, "init_states") is not None:
            options["learnable_init_states"] = True
    if options:
        out["mixer_options"] = options
    return out


def build_config(sd: dict, config_dict: dict | None = None, overrides: dict | None = None, task: str = "masked-lm") -> HydraConfig:
    """Reference defaults <- given config (json/yaml) <- shapes of the checkpoint <- explicit overrides."""
    allowed = set(inspect.signature(HydraConfig.__init__).parameters) - {"self", "kwargs"} | _GENERIC_CONFIG_KEYS
    values = dict(REFERENCE_DEFAULTS)
    given = {}
    config_dict = dict(config_dict or {})
    if "pool_all" in config_dict:  # the reference's flag for mean pooling in its classifier
        config_dict.setdefault("pooling", "mean" if config_dict.pop("pool_all") else "cls")
    for key, value in config_dict.items():
        if key in allowed:
            given[key] = value
        else:
            logger.info("ignoring config field %r (not used by the reference model)", key)
    values.update(given)
    inferred = infer_config_from_state_dict(sd, ngroups=int(values.get("ngroups", 1)))
    for key, value in inferred.items():
        if key in given and key != "mixer_options" and given[key] != value:
            logger.warning("config says %s=%r but the checkpoint's shapes say %r; using %r", key, given[key], value, value)
    if "matrix_mixer_type" not in inferred and "matrix_mixer_type" not in given and not (overrides or {}).get("matrix_mixer_type"):
        raise ConversionError(
            "the mixer is not a Hydra layer and no configuration names it: pass --yaml RUN.yaml, --config config.json "
            "or --set matrix_mixer_type=NAME (and is_data_dependent, qk_dim, ... as trained)")
    mixer_options = {**values.get("mixer_options", {}), **inferred.pop("mixer_options", {})}
    values.update(inferred)
    values["mixer_options"] = mixer_options
    values.update(overrides or {})
    if task == "sequence-classification" and "num_labels" not in values:
        raise ConversionError("sequence-classification needs num_labels (no classifier in the checkpoint)")
    arch = TASKS[task].__name__
    return HydraConfig(architectures=[arch], **values)


def convert_state_dict(sd: dict[str, torch.Tensor], config: HydraConfig, task: str = "masked-lm"):
    """A model of class ``TASKS[task]`` holding the reference weights (loaded strictly)."""
    renamed, unknown = rename_reference_keys(sd)
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint keys have no counterpart: {unknown[:8]}")
    model = TASKS[task](config)
    expected = model.state_dict()
    if task == "masked-lm":
        tied = renamed.pop("lm_head.decoder.weight", None)
        word = renamed["hydra.embeddings.word_embeddings.weight"]
        if tied is not None and not torch.equal(tied, word):
            raise ConversionError("the decoder weight differs from the word embeddings; the reference ties them, "
                                  "so this checkpoint does not come from its BertForMaskedLM")
        for key in [k for k in renamed if k.startswith(("hydra.pooler.", "classifier."))]:
            logger.info("dropping %s (not part of a masked-LM model)", key)
            del renamed[key]
    else:
        for key in [k for k in renamed if k.startswith("lm_head.")]:
            logger.info("dropping %s (not part of a classification model)", key)
            del renamed[key]
    missing = [k for k in expected if k not in renamed and not (task == "masked-lm" and k == "lm_head.decoder.weight")]
    extra = [k for k in renamed if k not in expected]
    if missing or extra:
        raise ConversionError(f"the checkpoint does not fit the configuration: missing {missing[:8]}, "
                              f"unexpected {extra[:8]}; pass the run's --yaml/--config")
    bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in renamed.items() if v.shape != expected[k].shape]
    if bad:
        raise ConversionError(f"shape mismatches (key, checkpoint, model): {bad[:5]}; pass the run's --yaml/--config")
    model.load_state_dict(renamed, strict=False)
    if task == "masked-lm":
        model.tie_weights()
    return model.eval()


def convert(checkpoint: str, output_dir: str, *, config_path: str | None = None, yaml_path: str | None = None,
            overrides: dict | None = None, task: str = "auto"):
    """Convert ``checkpoint`` and ``save_pretrained`` it (safetensors) to ``output_dir``; returns the model."""
    sd = load_reference_state_dict(checkpoint)
    config_dict: dict = {}
    if yaml_path:
        config_dict.update(read_run_yaml(yaml_path))
    if config_path:
        config_dict.update(read_config_json(config_path))
    if task == "auto":
        has_lm = any(k.startswith("cls.predictions.") for k in sd)
        task = "masked-lm" if has_lm or "classifier.weight" not in sd else "sequence-classification"
    if task not in TASKS:
        raise ConversionError(f"task must be 'auto' or one of {sorted(TASKS)}, got {task!r}")
    config = build_config(sd, config_dict, overrides, task=task)
    model = convert_state_dict(sd, config, task=task)
    model.save_pretrained(output_dir, safe_serialization=True)
    return model


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConversionError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hydra_ssm.models.convert_reference",
        description="Convert a reference Hydra BERT checkpoint into a transformers directory (HydraForMaskedLM).")
    parser.add_argument("checkpoint", help="reference checkpoint (.pt state dict, {'state': {'model': ...}}, or .safetensors)")
    parser.add_argument("output_dir", help="directory to write (config.json + model.safetensors)")
    parser.add_argument("--yaml", dest="yaml_path", help="the reference run yaml (reads model.model_config)")
    parser.add_argument("--config", dest="config_path", help="a config.json (reference BertConfig or HydraConfig fields)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (value parsed as JSON when possible); repeatable")
    parser.add_argument("--task", default="auto", choices=["auto", *TASKS],
                        help="model class to produce; auto: masked-lm unless the checkpoint only has a classifier")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = convert(args.checkpoint, args.output_dir, config_path=args.config_path, yaml_path=args.yaml_path,
                        overrides=_parse_set(args.overrides), task=args.task)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {type(model).__name__} ({n / 1e6:.2f}M parameters, mixer {model.config.matrix_mixer_type!r}, "
          f"{model.config.num_hidden_layers} layers) to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
