"""Generated tasks: non-causal multi-query associative recall (MQAR), ListOps, and the state-tracking tasks
parity and S5 (at every position, what a left-to-right and a right-to-left scan have accumulated there).

All are generated from fixed seeds (train and validation from different
streams), independent of the training seed, so every mixer sees the same data.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .config import TrainConfig
from .tasks import TaskData
from .tokenization import CLS, MASK, SEP, SPECIALS, word_level_tokenizer

TRAIN_SEED, VAL_SEED = 1234, 4321


# ---------------------------------------------------------------------------------------------- MQAR
def mqar_vocab(num_keys: int, num_values: int) -> list[str]:
    return [f"k{i}" for i in range(num_keys)] + [f"v{i}" for i in range(num_values)]


def mqar_examples(n: int, pairs: int, queries: int, num_keys: int, num_values: int, seed: int):
    """``n`` sequences of ``pairs`` key-value blocks ``k v`` and ``queries`` query blocks ``k [MASK]``, the
    blocks in random order (a query may come before or after its pair: non-causal). The label at a
    [MASK] is the value bound to the key; -100 elsewhere."""
    rng = np.random.default_rng(seed)
    k0 = len(SPECIALS)
    v0 = k0 + num_keys
    blocks = pairs + queries
    L = 2 * blocks + 2
    ids = np.empty((n, L), dtype=np.int64)
    labels = np.full((n, L), -100, dtype=np.int64)
    ids[:, 0], ids[:, -1] = CLS, SEP
    for i in range(n):
        keys = rng.choice(num_keys, size=pairs, replace=False)
        vals = rng.integers(0, num_values, size=pairs)
        q = rng.choice(pairs, size=queries, replace=False)
        kinds = np.concatenate([np.arange(pairs), pairs + np.arange(queries)])
        order = rng.permutation(kinds)
        for b, item in enumerate(order):
            pos = 1 + 2 * b
            if item < pairs:
                ids[i, pos], ids[i, pos + 1] = k0 + keys[item], v0 + vals[item]
            else:
                j = q[item - pairs]
                ids[i, pos], ids[i, pos + 1] = k0 + keys[j], MASK
                labels[i, pos + 1] = v0 + vals[j]
    return torch.from_numpy(ids), torch.from_numpy(labels)


def mqar_data(cfg: TrainConfig) -> TaskData:
    words = mqar_vocab(cfg.mqar_keys, cfg.mqar_values)
    args = (cfg.mqar_pairs, cfg.mqar_queries, cfg.mqar_keys, cfg.mqar_values)
    x_tr, y_tr = mqar_examples(cfg.synthetic_train_size, *args, seed=TRAIN_SEED)
    x_va, y_va = mqar_examples(cfg.synthetic_val_size, *args, seed=VAL_SEED)
    return TaskData("lm", {"input_ids": x_tr, "labels": y_tr}, {"input_ids": x_va, "labels": y_va},
                    vocab_size=len(SPECIALS) + len(words), seq_len=x_tr.shape[1], tokenizer=word_level_tokenizer(words),
                    info={"source": "synthetic mqar", "pairs": cfg.mqar_pairs, "queries": cfg.mqar_queries})


# ---------------------------------------------------------------------------------------------- ListOps
OPS = ["[MAX", "[MIN", "[MED", "[SM"]
LISTOPS_WORDS = OPS + ["]"] + [str(d) for d in range(10)]


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return sorted(args)[(len(args) - 1) // 2]
    return sum(args) % 10


def listops_expression(rng: np.random.Generator, budget: int, max_depth: int, max_args: int, depth: int = 0):
    """(tokens, value) of a random expression of at most ``budget`` tokens."""
    if depth >= max_depth or budget < 4:
        d = int(rng.integers(0, 10))
        return [str(d)], d
    op = OPS[int(rng.integers(0, len(OPS)))]
    nargs = int(rng.integers(2, max_args + 1))
    nargs = min(nargs, budget - 2)
    shares = rng.dirichlet(np.ones(nargs)) * (budget - 2)
    tokens, values = [op], []
    for s in shares:
        t, v = listops_expression(rng, max(1, int(s)), max_depth, max_args, depth + 1)
        tokens += t
        values.append(v)
    tokens.append("]")
    return tokens, _apply(op, values)


def listops_examples(n: int, min_len: int, max_len: int, max_depth: int, max_args: int, seed: int):
    rng = np.random.default_rng(seed)
    index = {w: i + len(SPECIALS) for i, w in enumerate(LISTOPS_WORDS)}
    seqs, labels = [], []
    while len(seqs) < n:
        target = int(rng.integers(min_len, max_len + 1))
        tokens, value = listops_expression(rng, target, max_depth, max_args)
        if len(tokens) < min_len:
            continue
        seqs.append(torch.tensor([CLS] + [index[t] for t in tokens] + [SEP], dtype=torch.long))
        labels.append(value)
    return seqs, torch.tensor(labels)


def listops_data(cfg: TrainConfig) -> TaskData:
    args = (cfg.listops_min_len, cfg.listops_max_len, cfg.listops_max_depth, cfg.listops_max_args)
    x_tr, y_tr = listops_examples(cfg.synthetic_train_size, *args, seed=TRAIN_SEED)
    x_va, y_va = listops_examples(cfg.synthetic_val_size, *args, seed=VAL_SEED)
    return TaskData("seqcls", {"input_ids": x_tr, "labels": y_tr}, {"input_ids": x_va, "labels": y_va},
                    vocab_size=len(SPECIALS) + len(LISTOPS_WORDS), num_labels=10, seq_len=cfg.listops_max_len + 2,
                    tokenizer=word_level_tokenizer(LISTOPS_WORDS),
                    info={"source": "synthetic listops", "mean_len": float(np.mean([len(s) for s in x_tr]))})


# ---------------------------------------------------------------------------------------------- state tracking
# Both tasks ask, at every position, for what a left-to-right scan and a right-to-left scan have accumulated there,
# so a causal (or anti-causal) mixer cannot answer everywhere, and the positions near either end (short prefixes,
# short suffixes) are easy enough to learn from. A task that asks everywhere for the whole sequence's parity gives
# no such signal (the parity of L bits is independent of every proper subset of them) and no mixer learns it.
PARITY_WORDS = ["0", "1"]
# the answer at a bit: the parity of the prefix ending there and of the suffix starting there, as two digits
PARITY_ANSWERS = ["00", "01", "10", "11"]
# the 120 permutations of 0..4 in one-line notation, lexicographic order: "p01234" (the identity) maps i to the
# i-th digit, e.g. "p10234" swaps 0 and 1
S5_PERMUTATIONS = np.array(list(itertools.permutations(range(5))), dtype=np.int64)  # (120, 5)
S5_WORDS = ["p" + "".join(map(str, p)) for p in S5_PERMUTATIONS]


def s5_compose_table() -> np.ndarray:
    """(120, 120) table ``T[a, b]`` = index of ``a ∘ b`` (apply b, then a: (a ∘ b)(i) = a(b(i)))."""
    P = S5_PERMUTATIONS
    composed = P[:, P]  # [a, b, i] = P[a, P[b, i]]
    code = composed @ (5 ** np.arange(4, -1, -1))  # a permutation read as a base-5 number: its index by lookup
    lookup = np.full(5 ** 5, -1, dtype=np.int64)
    lookup[P @ (5 ** np.arange(4, -1, -1))] = np.arange(len(P))
    return lookup[code]


def _framed(body: np.ndarray, answers: np.ndarray, first_answer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] body [SEP]`` ids (n, L + 2) for word ids ``body`` (n, L), and labels (n, L + 2): the word id
    ``first_answer + answers`` (n, L) at every body position, -100 at [CLS] and [SEP]."""
    n, L = body.shape
    ids = np.empty((n, L + 2), dtype=np.int64)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[:, 1:-1] = body
    labels = np.full((n, L + 2), -100, dtype=np.int64)
    labels[:, 1:-1] = first_answer + answers
    return torch.from_numpy(ids), torch.from_numpy(labels)


def parity_examples(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences ``[CLS] b_1 ... b_L [SEP]`` of ``length`` uniform random bits (words "0", "1"). The label at
    bit i is the pair (b_1 xor ... xor b_i, b_i xor ... xor b_L): the parity of the prefix ending at i and of the
    suffix starting at i, one of the four words `PARITY_ANSWERS` ("01": prefix even, suffix odd); -100 at
    [CLS]/[SEP]. Every answer depends on the bits on both sides of its position. Returns ids and labels, both
    (n, length + 2)."""
    bits = np.random.default_rng(seed).integers(0, 2, size=(n, length))
    prefix = np.cumsum(bits, axis=1) % 2
    suffix = np.cumsum(bits[:, ::-1], axis=1)[:, ::-1] % 2
    first_answer = len(SPECIALS) + len(PARITY_WORDS)
    return _framed(len(SPECIALS) + bits, 2 * prefix + suffix, first_answer)


def s5_examples(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` words ``[CLS] g_1 ... g_L [SEP]`` of ``length`` uniform random elements of the symmetric group S5
    (tokens `S5_WORDS`). The label at an odd position i (1, 3, ...) is the product of the prefix ending there,
    ``g_1 ∘ ... ∘ g_i``; at an even position, the product of the suffix starting there, ``g_i ∘ ... ∘ g_L``
    (functions composed right to left: ``a ∘ b`` maps x to a(b(x))); one of 120 classes (the word of that
    permutation), -100 at [CLS]/[SEP]. A left-to-right scan answers the odd positions, a right-to-left one the
    even positions. Returns ids and labels, both (n, length + 2)."""
    g = np.random.default_rng(seed).integers(0, len(S5_WORDS), size=(n, length))
    table = s5_compose_table()
    prefix, suffix = g.copy(), g.copy()
    for t in range(1, length):  # (g_1 ∘ ... ∘ g_{t-1}) ∘ g_t
        prefix[:, t] = table[prefix[:, t - 1], g[:, t]]
    for t in range(length - 2, -1, -1):  # g_t ∘ (g_{t+1} ∘ ... ∘ g_L)
        suffix[:, t] = table[g[:, t], suffix[:, t + 1]]
    odd = (np.arange(length) % 2 == 0)  # 1-based odd positions
    return _framed(len(SPECIALS) + g, np.where(odd, prefix, suffix), len(SPECIALS))


def state_tracking_data(cfg: TrainConfig) -> TaskData:
    """The parity or s5 task of ``cfg.synthetic_task``: sequences of ``--state-len`` tokens, a label at every one."""
    words, make = {"parity": (PARITY_WORDS + PARITY_ANSWERS, parity_examples),
                   "s5": (S5_WORDS, s5_examples)}[cfg.synthetic_task]
    x_tr, y_tr = make(cfg.synthetic_train_size, cfg.state_len, seed=TRAIN_SEED)
    x_va, y_va = make(cfg.synthetic_val_size, cfg.state_len, seed=VAL_SEED)
    return TaskData("lm", {"input_ids": x_tr, "labels": y_tr}, {"input_ids": x_va, "labels": y_va},
                    vocab_size=len(SPECIALS) + len(words), seq_len=x_tr.shape[1], tokenizer=word_level_tokenizer(words),
                    info={"source": f"synthetic {cfg.synthetic_task}", "state_len": cfg.state_len})


def synthetic_data(cfg: TrainConfig) -> TaskData:
    if cfg.synthetic_task == "mqar":
        return mqar_data(cfg)
    if cfg.synthetic_task == "listops":
        return listops_data(cfg)
    return state_tracking_data(cfg)
