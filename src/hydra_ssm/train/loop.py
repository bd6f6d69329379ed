"""The training loop: a plain PyTorch loop with torch's own utilities (DDP, autocast, LambdaLR).

Why no Trainer/accelerate: the loop is ~300 lines, and owning it makes the two
guarantees we test easy to keep: the batch of step ``s`` is a function of
(seed, s) only (see batching.batch_indices), and a checkpoint (checkpoints.py) holds everything else
that changes (weights, AdamW and scheduler state, python/numpy/torch RNG states,
step and data position), so a resumed run repeats an unbroken one exactly; and
the loss is normalised by the *global* number of targets, so N processes under
torchrun follow the single-process curve with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..mixers import SequenceMixer, get_mixer_class
from .checkpoints import (atomic_json, atomic_write, load_checkpoint, make_output_dir, new_run_id, resume_point,
                          run_config, save_checkpoint, save_model_dir)
from .config import TrainConfig, UsageError, options_for
from .batching import batch_indices, make_batch, pack_rows, step_generator
from .tasks import TaskData

EVAL_SEED = 2024


# ---------------------------------------------------------------------------------------------- processes
class Dist:
    """The processes of a run (torchrun's environment) and how a global batch is split between them.

    With ``--context-parallel N`` the ranks form groups of N consecutive ranks (``context_group``); the
    ranks of a group hold the same sequences, each a contiguous shard of their positions, and the
    groups split the batch (data parallel, ``world / N`` ways).
    """

    def __init__(self, cfg: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        self.device = torch.device(f"cuda:{self.local_rank}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        self.context = cfg.context_parallel  # ranks per context-parallel group
        if self.world % self.context:
            raise UsageError(f"--context-parallel {self.context}: the number of processes ({self.world}) must be a "
                             f"multiple of it (run under torchrun --nproc_per_node {self.context} or a multiple)")
        self.data_parallel = self.world // self.context
        if cfg.batch_size % self.data_parallel:
            what = "processes" if self.context == 1 else "data-parallel groups (processes / --context-parallel)"
            raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by the number of {what} "
                             f"({self.data_parallel})")
        self.context_group = None
        if self.context > 1:
            for first in range(0, self.world, self.context):  # every rank creates every group, in the same order
                group = dist.new_group(list(range(first, first + self.context)))
                if first <= self.rank < first + self.context:
                    self.context_group = group
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(cfg.threads or max(1, cores // self.world))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def local(self, batch: dict) -> dict:
        """This process's part of a global batch: its data-parallel group's rows and, with context
        parallelism, its shard of their positions (dimension 1 of the per-token tensors)."""
        if self.world == 1:
            return batch
        out = {}
        group = self.rank // self.context
        for k, v in batch.items():
            n = v.shape[0] // self.data_parallel
            v = v[group * n: (group + 1) * n]
            if self.context > 1 and v.dim() > 1:
                v = torch.tensor_split(v, self.context, dim=1)[self.rank % self.context]
            out[k] = v
        return out


def local_batch(gbatch: dict, d: Dist, packing: bool) -> dict:
    """This process's part of a global batch, packed into one row with --packing, on its device."""
    batch = d.local(gbatch)
    if packing:
        batch = pack_rows(batch)
    return {k: v.to(d.device) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- models
def model_config(cfg: TrainConfig, task: TaskData, mixer: str, intermediate_size: int):
    # "auto": position embeddings for the mixers that do not tell positions apart by themselves
    pos = cfg.position_embeddings == "on" or (cfg.position_embeddings == "auto"
                                              and not get_mixer_class(mixer).position_aware)
    kw = dict(vocab_size=max(task.vocab_size, 8), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              matrix_mixer_type=mixer, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, headdim=cfg.headdim,
              chunk_size=min(cfg.chunk_size, task.seq_len), num_attention_heads=cfg.num_heads,
              intermediate_size=intermediate_size, is_prenorm=cfg.prenorm, use_position_embeddings=pos,
              max_position_embeddings=task.seq_len, type_vocab_size=0, hidden_dropout_prob=cfg.dropout,
              pooling=cfg.pooling, mixer_init=cfg.mixer_init, num_labels=max(task.num_labels, 2), pad_token_id=0,
              mixer_options=options_for(cfg.mixer_options, mixer))
    if task.kind == "image":
        kw.update(image_size=task.image_size, patch_size=cfg.patch_size, num_channels=task.num_channels)
    kw.update(label_maps(task))
    try:
        return model_class(task).config_class(**kw)  # HydraVisionConfig for images
    except ValueError as err:
        raise UsageError(f"model for mixer {mixer!r}: {err}") from None


def label_maps(task: TaskData) -> dict:
    """``id2label``/``label2id`` from the task's label names (pipelines print them), or nothing."""
    names = task.info.get("label_names")
    if not names:
        return {}
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def model_class(task: TaskData):
    from ..models import HydraForImageClassification, HydraForMaskedLM, HydraForSequenceClassification

    return {"mlm": HydraForMaskedLM, "lm": HydraForMaskedLM, "seqcls": HydraForSequenceClassification,
            "image": HydraForImageClassification}[task.kind]


def count_params(cfg, task, mixer, intermediate_size) -> int:
    with torch.device("meta"):
        m = model_class(task)(model_config(cfg, task, mixer, intermediate_size))
    return sum(p.numel() for p in m.parameters())


def matched_intermediate(cfg, task, mixer, target: int) -> int:
    """MLP width that brings ``mixer``'s parameter count closest to ``target`` (0 when it is already larger)."""
    a, b = count_params(cfg, task, mixer, 64), count_params(cfg, task, mixer, 128)
    slope = (b - a) / 64
    width = int(round((target - (a - 64 * slope)) / slope))
    if width <= 0:
        return 0
    best = min({max(1, width - 1), width, width + 1}, key=lambda w: abs(count_params(cfg, task, mixer, w) - target))
    return best if abs(count_params(cfg, task, mixer, best) - target) < abs(count_params(cfg, task, mixer, 0) - target) else 0


def mlp_widths(cfg: TrainConfig, task: TaskData, mixers: list[str]) -> dict[str, int]:
    """The MLP width of each mixer's model: ``cfg.intermediate_size``; with ``cfg.match_params``, every mixer after
    the first gets the width that matches the first one's parameter count (`matched_intermediate`)."""
    target = count_params(cfg, task, mixers[0], cfg.intermediate_size)
    return {m: matched_intermediate(cfg, task, m, target) if i and cfg.match_params else cfg.intermediate_size
            for i, m in enumerate(mixers)}


def build_model(cfg: TrainConfig, task: TaskData, mixer: str, intermediate_size: int):
    if cfg.init_from and task.kind == "seqcls":
        cls = model_class(task)
        try:
            return cls.from_pretrained(cfg.init_from, num_labels=task.num_labels, hidden_dropout_prob=cfg.dropout,
                                       pooling=cfg.pooling, **label_maps(task))
        except Exception as err:
            raise UsageError(f"--init-from {cfg.init_from}: cannot load a model: {str(err).splitlines()[0]}") from None
    return model_class(task)(model_config(cfg, task, mixer, intermediate_size))


# ---------------------------------------------------------------------------------------------- loss
def loss_terms(model, batch: dict, kind: str, context_group=None):
    """(sum of per-target losses, number of targets, number of correct predictions); ``context_group``:
    the batch is this process's shard of the positions (Dist.local)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if context_group is not None:
        inputs["context_parallel_group"] = context_group
    logits = model(**inputs).logits.float()
    if kind in ("mlm", "lm"):
        sel = labels != -100
        logits, labels = logits[sel], labels[sel]
    loss = F.cross_entropy(logits, labels, reduction="sum") if labels.numel() else logits.sum() * 0
    correct = (logits.argmax(-1) == labels).sum()
    return loss, labels.numel(), correct


def tokens_in(batch: dict, task: TaskData) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return batch["pixel_values"].shape[0] * (task.seq_len)


@torch.no_grad()
def evaluate(model, task: TaskData, cfg: TrainConfig, d: Dist) -> dict:
    model.eval()
    n = task.num_val()
    bs = cfg.batch_size
    nb = math.ceil(n / bs)
    if cfg.eval_batches:
        nb = min(nb, cfg.eval_batches)
    tot = torch.zeros(3, dtype=torch.float64)
    amp = autocast(cfg, d)
    for b in range(nb):
        idx = list(range(b * bs, min(n, (b + 1) * bs)))
        while len(idx) % d.data_parallel:  # pad the last batch so it splits evenly; the padding is not counted
            idx.append(-1)
        keep = torch.tensor([i >= 0 for i in idx])
        batch = make_batch(task, "val", [max(i, 0) for i in idx], mask_prob=cfg.mask_prob,
                           gen=step_generator(EVAL_SEED, b, salt=1))
        if batch["labels"].dim() > 1:  # token targets: the padding rows have none
            batch["labels"][~keep] = -100
        batch = local_batch(batch, d, cfg.packing)
        local_keep = d.local({"k": keep})["k"].to(d.device)
        with amp:
            if task.kind in ("mlm", "lm"):
                loss, cnt, cor = loss_terms(model, batch, task.kind, d.context_group)
            else:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                logits = model(**inputs).logits.float()[local_keep]
                labels = batch["labels"][local_keep]
                loss = F.cross_entropy(logits, labels, reduction="sum")
                cnt, cor = labels.numel(), (logits.argmax(-1) == labels).sum()
        tot += torch.tensor([float(loss), float(cnt), float(cor)], dtype=torch.float64)
    tot = d.sum(tot)
    model.train()
    count = max(tot[1].item(), 1.0)
    return {"eval_loss": tot[0].item() / count, "eval_accuracy": tot[2].item() / count, "eval_targets": int(tot[1].item())}


class StepLoss(NamedTuple):
    """One process's part of a training step's loss."""

    backward: torch.Tensor  # what this process back-propagates (DDP then averages the gradients over processes)
    total: torch.Tensor  # its sum of per-target losses
    count: int  # targets in the global batch


def step_loss(model, gbatch: dict, kind: str, d: Dist, amp, packing: bool = False) -> StepLoss:
    """This process's loss on its part of the global batch ``gbatch``, normalised by the *global* number of
    targets and multiplied by the number of processes, so that DDP's average of the processes' gradients
    is the gradient of the global batch's mean loss, as one process would compute it (with context
    parallelism too: the shards' gradients cross the ranks in the mixers' exchanges)."""
    count = int((gbatch["labels"] != -100).sum()) if kind in ("mlm", "lm") else gbatch["labels"].shape[0]
    batch = local_batch(gbatch, d, packing)
    with amp:
        total, _, _ = loss_terms(model, batch, kind, d.context_group)
    return StepLoss(total * (d.world / max(count, 1)), total, count)


def decays(name: str, p: torch.nn.Parameter) -> bool:
    """Whether AdamW's weight decay applies to parameter ``name``: matrices and kernels (2-D and up) do; vectors
    (biases, norm weights, per-head dt_bias/A_log/D), embeddings and every parameter a layer flagged with
    ``p._no_weight_decay = True`` (e.g. Hydra's learned initial states) do not."""
    return p.dim() >= 2 and "embeddings" not in name and not getattr(p, "_no_weight_decay", False)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's two parameter groups: those that `decays` (with ``weight_decay``) and the rest (none)."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]


def autocast(cfg: TrainConfig, d: Dist):
    return torch.autocast(d.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# ---------------------------------------------------------------------------------------------- one run
def train_run(cfg: TrainConfig, task: TaskData, mixer: str, run_dir: str, d: Dist, intermediate_size: int,
              label: str = "") -> dict:
    """Train one model; returns the result row. ``run_dir`` receives metrics.jsonl, checkpoints/ and model/."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    config = run_config(cfg, mixer, intermediate_size)
    # before anything is written: refuse another run's checkpoints, pick (and check) the one to resume from
    ck = resume_point(run_dir, cfg, config, d.world, quiet=not d.main)
    make_output_dir(run_dir)
    d.barrier()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task, mixer, intermediate_size).to(d.device)
    mixer = model.config.matrix_mixer_type
    if d.context > 1:  # every shard needs the rows that the mixers read from each neighbour
        halo = max((getattr(m, "halo", 1) for m in model.modules() if isinstance(m, SequenceMixer)), default=1)
        if task.seq_len // d.context < halo:
            raise UsageError(f"--context-parallel {d.context}: sequences of {task.seq_len} positions make shards of "
                             f"{task.seq_len // d.context}, fewer than the {halo} rows each shard hands its neighbours "
                             f"(d_conv // 2 + 1); use a longer --seq-len or a smaller --context-parallel")
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(cfg.seed + 1 + d.rank)
    random.seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    state = {"step": 0, "wall_s": 0.0, "train_time_s": 0.0, "tokens": 0, "run_id": new_run_id()}
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if ck:
        state = load_checkpoint(ck, model, opt, sched, d)
        state.setdefault("run_id", new_run_id())
    d.barrier()  # every process has read the checkpoint before process 0 writes anything
    if d.main:  # the log holds exactly the steps up to the checkpoint (or nothing)
        lines = []
        if ck and os.path.isfile(metrics_path):
            with open(metrics_path) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut by the kill
                    if rec.get("step", 0) <= state["step"]:
                        lines.append(line if line.endswith("\n") else line + "\n")
        atomic_write(metrics_path, lambda fh: fh.writelines(lines))
        atomic_json(os.path.join(run_dir, "train_config.json"), config)
    ddp = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    model.train()
    amp = autocast(cfg, d)
    log = open(metrics_path, "a") if d.main else None
    bar = None
    if d.main and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=state["step"], desc=label or mixer, dynamic_ncols=True, file=sys.stderr)
    n_train = task.num_train()
    last_eval = None
    t_start = time.perf_counter()
    wall0 = state["wall_s"]
    for step in range(state["step"], cfg.steps):
        t0 = time.perf_counter()
        idx = batch_indices(n_train, cfg.batch_size, cfg.seed, step)
        gbatch = make_batch(task, "train", idx, mask_prob=cfg.mask_prob, gen=step_generator(cfg.seed, step))
        ntok = tokens_in(gbatch, task)
        loss = step_loss(ddp, gbatch, task.kind, d, amp, cfg.packing)
        opt.zero_grad(set_to_none=True)
        loss.backward.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        mean_loss = float(d.sum(loss.total.detach().double())) / max(loss.count, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"{label or mixer}: the loss became {mean_loss} at step {step + 1}; lower --lr")
        dt = time.perf_counter() - t0
        state["train_time_s"] += dt
        state["tokens"] += ntok
        state["step"] = step + 1
        state["wall_s"] = wall0 + time.perf_counter() - t_start
        if log:
            log.write(json.dumps({"step": step + 1, "loss": mean_loss, "lr": lr, "tokens": state["tokens"],
                                  "time_s": round(state["wall_s"], 3)}) + "\n")
            log.flush()
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", **({"val_acc": f"{last_eval['eval_accuracy']:.3f}"} if last_eval else {}))
        done = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or done:
            last_eval = evaluate(model, task, cfg, d)
            if log:
                log.write(json.dumps({"step": step + 1, **last_eval}) + "\n")
                log.flush()
        if (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or done:
            state["wall_s"] = wall0 + time.perf_counter() - t_start
            save_checkpoint(run_dir, step + 1, ddp, opt, sched, state, task, d, cfg.keep_checkpoints, config)
        if cfg.debug_step_delay:
            time.sleep(cfg.debug_step_delay)
    if bar:
        bar.close()
    if log:
        log.close()
    if last_eval is None:  # resumed after the end: read the final evaluation back
        last_eval = evaluate(model, task, cfg, d)
    result = {"task": label.split("/")[0] if label else cfg.task, "mixer": mixer, "params": n_params,
              "intermediate_size": intermediate_size, "steps": state["step"], "batch_size": cfg.batch_size,
              "seq_len": task.seq_len, "val_accuracy": last_eval["eval_accuracy"], "val_loss": last_eval["eval_loss"],
              "tokens_per_s": state["tokens"] / max(state["train_time_s"], 1e-9), "wall_s": state["wall_s"],
              "run_dir": run_dir}
    if d.main:
        save_model_dir(os.path.join(run_dir, "model"), model, task, config)
        atomic_json(os.path.join(run_dir, "result.json"), result)
    d.barrier()
    return result
