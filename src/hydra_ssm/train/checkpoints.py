"""Checkpoints that cannot be lost, half-written, silently changed, or pruned by another run.

Layout of ``RUN/checkpoints/`` (RUN = OUTPUT_DIR/<task>/<mixer>)::

    step-0000020/   config.json model.safetensors         the model (save_pretrained) and its tokenizer files
                    optimizer.pt                          AdamW + LR scheduler state
                    rng-rank<r>.pt                        python/numpy/torch(/CUDA) RNG state of process r
                    trainer_state.json                    step, tokens, timing, run id, number of processes
                    train_config.json                     the options of the run (compared on --resume)
                    manifest.json                         size and sha256 of every file above; written last
    latest          name of the newest checkpoint written (informative: resuming looks at the manifests)

A checkpoint is written into ``step-N.tmp/``, every file fsynced, the manifest
written last, then the directory renamed with ``os.replace``; a checkpoint
counts as complete only when its manifest verifies. ``--resume`` takes the
newest complete checkpoint and says which damaged or incomplete ones it
passed over. Pruning (``--keep-checkpoints``) removes only checkpoints whose
manifest carries this run's id, and a run that does not resume refuses a run
directory that already holds checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import uuid

import numpy as np
import torch

from .config import UsageError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")
REQUIRED = ("config.json", "model.safetensors", "optimizer.pt", "trainer_state.json", "train_config.json")
# options that may differ when a run is resumed: they do not change the training trajectory (bookkeeping, output,
# evaluation, speed); --steps may grow (the run is extended) and is checked on its own
RESUME_FREE = ("eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "resume", "progress", "plot",
               "threads", "device", "debug_step_delay", "output_dir", "tasks", "mixers", "match_params")
PATH_OPTIONS = ("train_file", "validation_file", "tokenizer_from", "init_from")


def warn(msg: str) -> None:
    print(f"hydra-ssm: warning: {msg}", file=sys.stderr, flush=True)


def new_run_id() -> str:
    return uuid.uuid4().hex


def run_config(cfg, mixer: str, intermediate_size: int) -> dict:
    """The options one run was trained with: its mixer and its own MLP width (a comparison sizes each mixer's)."""
    return {**cfg.to_dict(), "mixers": [mixer], "intermediate_size": intermediate_size}


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    st = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [st[0], torch.from_numpy(st[1].astype(np.int64)), int(st[2]), int(st[3]), float(st[4])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------------------------- durable writes
def fsync_dir(path: str) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write, binary: bool = False) -> None:
    """``write(fh)`` into a temporary file beside ``path``, fsync it, then os.replace it onto ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb" if binary else "w") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_torch_save(obj, path: str) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def atomic_json(path: str, obj) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, default=str))


# sha256 of files already checked in this process, by path and stat: a resume checks the same checkpoint
# before the data are read, once the run plan is known, and when it loads it
_CHECKED: dict = {}


def _sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _CHECKED:
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED[key] = _file_entry(path)["sha256"]
    return _CHECKED[key]


def _file_entry(path: str) -> dict:
    """Size and sha256 of a file, fsynced on the way (the writers above it may not have)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
        os.fsync(fh.fileno())
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def write_manifest(directory: str, info: dict) -> None:
    """Record every file of ``directory`` (size, sha256) in manifest.json, written last: it marks completeness."""
    files = {}
    for root, _, names in os.walk(directory):
        for n in sorted(names):
            full = os.path.join(root, n)
            rel = os.path.relpath(full, directory)
            if rel != MANIFEST:
                files[rel] = _file_entry(full)
    atomic_json(os.path.join(directory, MANIFEST), {"format": MANIFEST_FORMAT, **info, "files": files})


def read_manifest(directory: str) -> tuple[dict | None, str | None]:
    """(manifest, None) or (None, what is wrong with it)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None, "no manifest.json (its write did not finish, or an older hydra-ssm wrote it)"
    try:
        with open(path, encoding="utf-8") as fh:
            man = json.load(fh)
    except (OSError, ValueError) as err:
        return None, f"manifest.json is unreadable ({str(err).splitlines()[0]})"
    if not isinstance(man, dict) or not isinstance(man.get("files"), dict):
        return None, "manifest.json is not a hydra-ssm manifest"
    return man, None


def verify_dir(directory: str, required=(), only=None) -> tuple[dict | None, str | None]:
    """Check every file of the manifest (or those of ``only``: presence, size, sha256) and that ``required``
    are in it. Returns (manifest, None) when the directory is complete, else (None, the first problem found).
    """
    man, problem = read_manifest(directory)
    if problem:
        return None, problem
    files = man["files"]
    for name in required:
        if name not in files:
            return None, f"{name} is not in its manifest"
    for name, entry in sorted(files.items()):
        if only is not None and name not in only:
            continue
        if not isinstance(entry, dict):
            return None, f"manifest.json has no size and checksum for {name}"
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            return None, f"{name} is missing"
        size = os.path.getsize(path)
        if size != entry.get("size"):
            return None, f"{name} has {size} bytes, its manifest says {entry.get('size')} (truncated or overwritten)"
        if _sha256(path) != entry.get("sha256"):
            return None, f"{name} does not match its sha256 checksum (corrupted)"
    return man, None


# ---------------------------------------------------------------------------------------------- the run directory
class Checkpoint:
    """One complete, verified checkpoint directory."""

    def __init__(self, path: str, step: int, manifest: dict):
        self.path = path
        self.name = os.path.basename(path)
        self.step = step
        self.manifest = manifest

    def read_json(self, name: str) -> dict:
        with open(os.path.join(self.path, name), encoding="utf-8") as fh:
            return json.load(fh)


def checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every ``step-N`` directory, newest first, complete or not."""
    ck = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ck):
        return []
    found = []
    for n in os.listdir(ck):
        m = STEP_DIR.match(n)
        if m and os.path.isdir(os.path.join(ck, n)):
            found.append((int(m.group(1)), os.path.join(ck, n)))
    return sorted(found, reverse=True)


def _required(world: int) -> tuple:
    return REQUIRED + tuple(f"rng-rank{r}.pt" for r in range(world))


def newest_complete(run_dir: str, quiet: bool = False) -> Checkpoint | None:
    """The newest checkpoint whose manifest verifies; the ones passed over are named in a warning.

    None when the run directory has no checkpoint at all; UsageError when it has some and none is complete.
    """
    dirs = checkpoint_dirs(run_dir)
    damaged = []
    chosen = None
    for step, path in dirs:
        man, problem = read_manifest(path)
        if man is not None:
            world = man.get("world_size")
            man, problem = verify_dir(path, _required(world if isinstance(world, int) and world > 0 else 1))
        if man is not None and man.get("step") != step:
            man, problem = None, f"its manifest is for step {man.get('step')}"
        if man is not None:
            chosen = Checkpoint(path, step, man)
            break
        damaged.append(f"{os.path.basename(path)}: {problem}")
    ck_dir = os.path.join(run_dir, "checkpoints")
    if chosen is None:
        if dirs:
            raise UsageError(f"--resume: no complete checkpoint in {ck_dir} ({'; '.join(damaged)}); "
                             "start a new run with another --output-dir")
        return None
    if not quiet:
        for d in damaged:
            warn(f"skipping damaged checkpoint {os.path.join(ck_dir, d)}")
        latest = os.path.join(ck_dir, "latest")
        named = None
        if os.path.isfile(latest):
            with open(latest, encoding="utf-8", errors="replace") as fh:
                named = fh.read().strip()
        if named is None:
            warn(f"{latest} is missing; resuming from the newest complete checkpoint, {chosen.name}")
        elif named != chosen.name and not any(d.startswith(named + ":") for d in damaged):
            warn(f"{latest} names {named!r}, which is not a complete checkpoint; resuming from {chosen.name}")
        if damaged:
            warn(f"resuming from {chosen.path} (step {chosen.step})")
    return chosen


def resume_problems(saved: dict, new: dict, step: int) -> list[str]:
    """Differences between the options a checkpoint was trained with and the new ones that would change the run."""
    out = []
    for k in sorted(set(saved) & set(new)):
        if k in RESUME_FREE:
            continue
        a, b = saved[k], new[k]
        if k in PATH_OPTIONS:  # the same files, however they are spelt
            a, b = ([os.path.realpath(p.strip()) for p in str(v).split(",") if p.strip()] for v in (a, b))
        flag = "--" + k.replace("_", "-")
        if k == "steps":
            if b < step:
                out.append(f"--steps {b} is below the checkpoint's step {step}")
            elif b < a:
                out.append(f"--steps {a} -> {b} (a run can be extended, not shortened)")
        elif a != b:
            out.append(f"{flag} {_show(saved[k])} -> {_show(new[k])}")
    return out


def _show(v) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "''"
    return repr(v) if isinstance(v, str) else str(v)


def resume_point(run_dir: str, cfg, config: dict, world: int, quiet: bool = False) -> Checkpoint | None:
    """The checkpoint this run continues from (None: it starts at step 0), or UsageError before any training.

    Without --resume a run directory that already holds checkpoints is refused: they belong to another run,
    and this one would mix its log and checkpoints with them.
    """
    if not cfg.resume:
        dirs = checkpoint_dirs(run_dir)
        if dirs:
            raise UsageError(f"{run_dir} already holds checkpoints of an earlier run ({os.path.basename(dirs[0][1])}); "
                             "pass --resume to continue it, or choose another --output-dir")
        return None
    ck = newest_complete(run_dir, quiet=quiet)
    if ck is None:
        if not quiet:
            warn(f"--resume: no checkpoint in {os.path.join(run_dir, 'checkpoints')}; starting from step 0")
        return None
    saved_world = ck.read_json("trainer_state.json").get("world_size", 1)
    problems = resume_problems(ck.read_json("train_config.json"), config, ck.step)
    if saved_world != world:
        problems.insert(0, f"{saved_world} process(es) wrote it, this run has {world}")
    if problems:
        raise UsageError(f"--resume: {ck.path} was trained with other options: {'; '.join(problems)}. Resume with "
                         "the original values, or start a new run with another --output-dir (what may change on "
                         "resume: docs/training.md, 'Checkpoints and resuming')")
    return ck


def make_output_dir(path: str, flag: str = "--output-dir") -> None:
    """Create ``path`` (and parents) and check that files can be written there; UsageError otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".hydra-ssm-write-test")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"{flag}: cannot write to {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------------------- writing
def write_model_files(directory: str, model, task) -> None:
    """What a model directory holds: save_pretrained (safetensors) and the tokenizer or image processor it reads."""
    from .tokenization import save_tokenizer

    raw = model.module if hasattr(model, "module") else model
    raw.save_pretrained(directory, safe_serialization=True)
    if task.tokenizer is not None:
        save_tokenizer(task.tokenizer, directory)
    if task.image_processor is not None:
        task.image_processor.save_pretrained(directory)


def _move_aside(path: str) -> str:
    """Rename ``path`` to ``path.damaged[N]`` (never deleted: this run may not have written it)."""
    n, target = 1, path + ".damaged"
    while os.path.exists(target):
        n += 1
        target = f"{path}.damaged{n}"
    os.replace(path, target)
    return target


def _publish(tmp: str, final: str) -> None:
    """Rename the finished ``tmp`` directory onto ``final``; an existing ``final`` is moved aside with a warning."""
    if os.path.exists(final):
        warn(f"{final} already exists (left by an interrupted or damaged run); moved to {_move_aside(final)}")
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))


def save_checkpoint(run_dir: str, step: int, model, opt, sched, state: dict, task, d, keep: int,
                    config: dict) -> None:
    """Write checkpoints/step-N (see the module notes), switch ``latest``, prune this run's older checkpoints.

    Every process writes its RNG state; process 0 writes the rest. ``state`` carries ``run_id``.
    """
    ck = os.path.join(run_dir, "checkpoints")
    name = f"step-{step:07d}"
    tmp = os.path.join(ck, name + ".tmp")
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)  # a write of this step that was killed
        os.makedirs(tmp)
    d.barrier()
    atomic_torch_save(rng_state(), os.path.join(tmp, f"rng-rank{d.rank}.pt"))
    d.barrier()
    if d.main:
        write_model_files(tmp, model, task)
        atomic_torch_save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                          os.path.join(tmp, "optimizer.pt"))
        atomic_json(os.path.join(tmp, "trainer_state.json"), {**state, "step": step, "world_size": d.world})
        atomic_json(os.path.join(tmp, "train_config.json"), config)
        write_manifest(tmp, {"step": step, "run_id": state["run_id"], "world_size": d.world})
        final = os.path.join(ck, name)
        _publish(tmp, final)
        atomic_write(os.path.join(ck, "latest"), lambda fh: fh.write(name))
        prune(run_dir, state["run_id"], step, keep)
    d.barrier()


def prune(run_dir: str, run_id: str, step: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints of run ``run_id`` up to ``step``; touch nothing else."""
    ours = []
    for s, path in checkpoint_dirs(run_dir):
        man, _ = read_manifest(path)
        if s <= step and man is not None and man.get("run_id") == run_id:
            ours.append(path)
    for path in ours[keep:]:  # renamed first, so a kill during the removal leaves no half checkpoint
        shutil.rmtree(path + ".deleting", ignore_errors=True)  # such a leftover of an earlier prune
        os.replace(path, path + ".deleting")
        shutil.rmtree(path + ".deleting", ignore_errors=True)


def save_model_dir(directory: str, model, task, config: dict) -> None:
    """The final model (RUN/model): written beside, with a manifest, then renamed into place."""
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_model_files(tmp, model, task)
    atomic_json(os.path.join(tmp, "train_config.json"), config)
    write_manifest(tmp, {"model": True})
    if os.path.isdir(directory):  # the model of this run, saved by an earlier (resumed) invocation
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    fsync_dir(os.path.dirname(os.path.abspath(directory)))


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint(ck: Checkpoint, model, opt, sched, d) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG state from a verified checkpoint."""
    from safetensors.torch import load_file

    raw = model.module if hasattr(model, "module") else model
    weights = load_file(os.path.join(ck.path, "model.safetensors"), device=str(d.device))
    try:
        missing, unexpected = raw.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes that differ
        raise UsageError(f"checkpoint {ck.path} does not fit the model: {str(err).splitlines()[-1].strip()}") from None
    tied = set(getattr(raw, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and "decoder.weight" not in k]
    if missing or unexpected:
        raise UsageError(f"checkpoint {ck.path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    osd = torch.load(os.path.join(ck.path, "optimizer.pt"), map_location=d.device, weights_only=True)
    opt.load_state_dict(osd["optimizer"])
    sched.load_state_dict(osd["scheduler"])
    set_rng_state(torch.load(os.path.join(ck.path, f"rng-rank{d.rank}.pt"), weights_only=True))
    return ck.read_json("trainer_state.json")


def load_model_dir(model_dir: str, flag: str = "--model"):
    """A saved model (RUN/model, a checkpoint, or any save_pretrained directory of a Hydra model), checked first:
    its manifest when it has one, a config.json of model_type 'hydra', weights that safetensors can read."""
    from transformers import AutoConfig

    from .. import models

    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir) or not os.path.isfile(cfg_path):
        raise UsageError(f"{flag}: {model_dir} is not a model directory (no config.json)")
    if os.path.isfile(os.path.join(model_dir, MANIFEST)):  # the files a model is read from (not a checkpoint's rest)
        needed = ("config.json", "model.safetensors")
        _, problem = verify_dir(model_dir, needed, only=needed + TOKENIZER_FILES)
        if problem:
            raise UsageError(f"{flag}: {model_dir} is damaged: {problem}")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag}: {cfg_path} is not valid JSON ({str(err).splitlines()[0]})") from None
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    ours = (models.HydraConfig.model_type, models.HydraVisionConfig.model_type)
    if kind not in ours:
        raise UsageError(f"{flag}: {cfg_path} is not a hydra-ssm model config (model_type {kind!r}, expected "
                         f"{' or '.join(map(repr, ours))})")
    arch = (raw.get("architectures") or ["HydraForMaskedLM"])[0]
    cls = getattr(models, arch, None) if arch.startswith("Hydra") else None
    if cls is None:
        raise UsageError(f"{flag}: {cfg_path} names architecture {arch!r}, which hydra-ssm does not have")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        raise UsageError(f"{flag}: {model_dir} has no model.safetensors")
    try:
        AutoConfig.from_pretrained(model_dir)
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(f"{flag}: {cfg_path} is not a valid Hydra config: {str(err).splitlines()[0]}") from None
    try:
        return cls.from_pretrained(model_dir)
    except Exception as err:  # safetensors' own error types, shape mismatches: all mean unreadable weights
        raise UsageError(f"{flag}: cannot load the weights in {os.path.join(model_dir, 'model.safetensors')}: "
                         f"{str(err).splitlines()[0]}") from None
