"""Batches: the examples of a training step (a function of seed and step only), padding or packing, BERT masking.

Every data set is held in memory and indexed by position, so the batch of step ``s`` needs no iterator state:
resuming repeats it exactly, and processes under torchrun each take their slice of the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tasks import TaskData
from .tokenization import MASK, PAD, SPECIALS

def _select(data: dict, idx: list[int]) -> dict:
    out = {}
    for k, v in data.items():
        out[k] = v[torch.as_tensor(idx)] if torch.is_tensor(v) else [v[i] for i in idx]
    return out

def pad_ragged(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask

def mask_tokens(ids: torch.Tensor, prob: float, vocab_size: int, gen: torch.Generator, valid=None):
    """BERT masking: ``prob`` of the (non-special) tokens become targets; of those 80% [MASK], 10% random, 10% kept."""
    special = ids < len(SPECIALS)
    if valid is not None:
        special |= valid == 0
    u = torch.rand(ids.shape, generator=gen)
    target = (u < prob) & ~special
    labels = torch.where(target, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    rand_tok = torch.randint(len(SPECIALS), vocab_size, ids.shape, generator=gen)
    out = ids.clone()
    out[target & (r < 0.8)] = MASK
    swap = target & (r >= 0.8) & (r < 0.9)
    out[swap] = rand_tok[swap]
    return out, labels

def make_batch(task: TaskData, split: str, idx: list[int], *, mask_prob: float, gen: torch.Generator) -> dict:
    """The model inputs for examples ``idx`` of ``split``; random parts (masking) drawn from ``gen``."""
    rows = _select(task.train if split == "train" else task.val, idx)
    if task.kind == "mlm":
        ids, labels = mask_tokens(rows["input_ids"], mask_prob, task.vocab_size, gen)
        return {"input_ids": ids, "labels": labels}
    if task.kind == "image":
        return {"pixel_values": rows["pixel_values"], "labels": rows["labels"]}
    ids = rows["input_ids"]
    if isinstance(ids, list):
        ids, mask = pad_ragged(ids)
    else:
        mask = None
    out = {"input_ids": ids, "labels": rows["labels"]}
    if mask is not None and not bool(mask.all()):
        out["attention_mask"] = mask
    return out

def pack_rows(batch: dict) -> dict:
    """A (right- or left-) padded text batch -> one packed row of the same examples, as the models take it.

    input_ids (B, L) with attention_mask (B, L) (none: every row full) -> input_ids (1, total) holding
    the valid tokens row after row and cu_seq_lens_q (B + 1,) int32, their offsets; per-token labels
    (B, L) are packed alike, per-example labels (B,) kept. The model then mixes every example alone:
    the same outputs as the padded batch, without the compute spent on padding.
    """
    ids = batch["input_ids"]
    valid = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    labels = batch["labels"]
    return {"input_ids": ids[valid][None], "cu_seq_lens_q": F.pad(valid.sum(1).cumsum(0), (1, 0)).to(torch.int32),
            "labels": labels[valid][None] if labels.dim() == 2 else labels}

def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)

def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Global batch ``step`` (0-based) of a seeded shuffle, epoch after epoch: a function of (seed, step) only."""
    start = step * batch_size
    out: list[int] = []
    epoch, pos = divmod(start, n)
    order = epoch_order(n, seed, epoch)
    while len(out) < batch_size:
        take = min(batch_size - len(out), n - pos)
        out += order[pos: pos + take].tolist()
        pos += take
        if pos == n:
            epoch, pos = epoch + 1, 0
            order = epoch_order(n, seed, epoch)
    return out

def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + step * 104_729 + salt * 15_485_863) % (2**63 - 1))
