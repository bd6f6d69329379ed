"""The data of each task, as a `TaskData`: masked LM on text (mlm), labelled texts (classify) and images (image);
the generated tasks are in synthetic.py.

Held-out examples never depend on --seed: documents by content hash (corpus.py), rows and images by a shuffle
with the fixed ``SPLIT_SEED`` (`seeded_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import TrainConfig, UsageError, _split_paths
from .corpus import cap_chars, default_corpus, read_text_files, split_docs
from .tables import check_columns, check_label_ids, import_datasets, label_kind, read_npz, read_table
from .tokenization import CLS, SEP, encode_stream, encode_texts, train_tokenizer, transformers_tokenizer

SPLIT_SEED = 12345  # the held-out rows and images do not depend on --seed


@dataclass
class TaskData:
    """What a run needs from its task: tensors, kind of model, vocabulary and metadata."""
    kind: str                      # "mlm" | "seqcls" | "tokcls" (mqar, labels at query positions) | "image"
    train: dict                    # name -> tensor (first dim = examples) or list for ragged "input_ids"
    val: dict
    vocab_size: int = 0
    num_labels: int = 0
    seq_len: int = 0               # longest sequence (position table size)
    tokenizer: object = None
    image_size: int = 0
    num_channels: int = 0
    image_processor: object = None  # images: the HydraImageProcessor the data went through (saved with the model)
    info: dict = field(default_factory=dict)

    def num_train(self) -> int:
        return len(next(iter(self.train.values())))

    def num_val(self) -> int:
        return len(next(iter(self.val.values())))


def seeded_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) positions of ``n`` examples: a shuffle seeded with ``SPLIT_SEED`` whose first
    ``round(n * fraction)`` (at least 1, at most n - 1) positions are held out. This is the permutation and the cut
    of ``datasets.Dataset.train_test_split(test_size=..., shuffle=True, seed=SPLIT_SEED)``; both parts are in
    shuffled order."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = min(max(n - 1, 0), max(1, int(round(n * fraction))))
    return perm[n_val:], perm[:n_val]


def _chunks(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    body = seq_len - 2
    n = len(stream) // body
    x = torch.from_numpy(stream[: n * body].reshape(n, body).copy())
    return torch.cat([torch.full((n, 1), CLS), x, torch.full((n, 1), SEP)], 1)

def mlm_data(cfg: TrainConfig, tokenizer=None) -> TaskData:
    """Masked-LM sequences ``[CLS] body [SEP]`` of ``--seq-len`` cut from the token stream.

    Without --validation-file, text files are split by document (`split_docs`); when that leaves no
    validation sequence (one document, or held-out documents shorter than a sequence), the last
    ``--validation-fraction`` of the sequences of all the text is held out instead.
    """
    fraction = cfg.validation_fraction or 0.05
    held_out_docs = False
    if cfg.train_file:
        docs = read_text_files(_split_paths(cfg.train_file), "--train-file")
        if cfg.max_corpus_chars:
            docs = cap_chars(docs, cfg.max_corpus_chars)
        if cfg.validation_file:
            train_docs = docs
            val_docs = read_text_files(_split_paths(cfg.validation_file), "--validation-file")
        else:
            train_docs, val_docs = split_docs(docs, fraction)
            held_out_docs = True
        source = cfg.train_file
    else:
        train_docs, val_docs = default_corpus(cfg.max_corpus_chars)
        docs = train_docs + val_docs
        source = "python stdlib (pydoc topics + sources)"
    if not any(d.strip() for d in train_docs + (val_docs if held_out_docs else [])):
        raise UsageError(f"the training corpus is empty ({source})")
    if not held_out_docs and not any(d.strip() for d in val_docs):
        raise UsageError(f"the validation corpus is empty ({cfg.validation_file or source}); add text or a --validation-file")
    tok = getattr(tokenizer, "backend_tokenizer", tokenizer) or train_tokenizer(cfg.tokenizer, train_docs, cfg.vocab_size)
    train = _chunks(encode_stream(tok, train_docs), cfg.seq_len)
    val = _chunks(encode_stream(tok, val_docs), cfg.seq_len)
    validation = "--validation-file" if cfg.validation_file else "held-out documents"
    if held_out_docs and len(val) == 0:  # too few documents to hold some out: hold out the last sequences
        chunks = _chunks(encode_stream(tok, docs), cfg.seq_len)
        n_val = max(1, int(round(len(chunks) * fraction)))
        train, val = chunks[: len(chunks) - n_val], chunks[len(chunks) - n_val:]
        train_docs, val_docs = docs, []
        validation = f"the last {n_val} of {len(chunks)} sequences"
    if len(train) == 0 or len(val) == 0:
        raise UsageError(f"the corpus is too small for --seq-len {cfg.seq_len}: "
                         f"{len(train)} training and {len(val)} validation sequences")
    return TaskData("mlm", {"input_ids": train}, {"input_ids": val}, vocab_size=tok.get_vocab_size(),
                    seq_len=cfg.seq_len, tokenizer=transformers_tokenizer(tok, cfg.seq_len),
                    info={"source": source, "validation": validation, "train_chars": sum(map(len, train_docs)),
                          "val_chars": sum(map(len, val_docs)), "train_sequences": len(train), "val_sequences": len(val)})

def classify_data(cfg: TrainConfig, tokenizer=None, label_names: list[str] | None = None) -> TaskData:
    """Labelled texts: tables read with `datasets`, labels cast to a ``ClassLabel`` (text labels numbered in
    sorted order, as ``class_encode_column`` does; integer labels named "0", "1", ...), a seeded
    ``train_test_split`` when there is no --validation-file, texts encoded by the tokenizer that is saved.

    ``label_names`` (a saved model's id2label) fixes the classes; with a --validation-file the training
    file is then not read at all (evaluation).
    """
    if not cfg.train_file and not (label_names and cfg.validation_file):
        raise UsageError("task 'classify' needs --train-file (CSV, TSV, JSON lines, Parquet, or label<TAB>text .txt)")
    datasets = import_datasets()
    tables = {}
    if not (label_names and cfg.validation_file):
        tables["--train-file"] = read_table(cfg.train_file, "--train-file", cfg)
    if cfg.validation_file:
        tables["--validation-file"] = read_table(cfg.validation_file, "--validation-file", cfg)
    for what, ds in tables.items():
        check_columns(ds, what, cfg)

    col = cfg.label_column
    kinds = {}
    for what in tables:
        kinds[what], tables[what] = label_kind(tables[what], what, cfg)
    if len(set(kinds.values())) > 1:
        word = {"ids": "integers", "names": "names"}
        raise UsageError(f"the labels of --train-file are {word[kinds['--train-file']]} but those of "
                         f"--validation-file are {word[kinds['--validation-file']]}")
    kind = next(iter(kinds.values()))
    first = next(iter(tables.values()))
    if label_names:
        names, source = list(label_names), "the model's labels (id2label)"
    elif kind == "names":
        names, source = sorted(set(first[col])), "the training data"
        if cfg.num_labels and cfg.num_labels != len(names):
            raise UsageError(f"--num-labels {cfg.num_labels} does not match the {len(names)} label names of "
                             f"--train-file ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    else:
        feature = first.features[col]
        named = feature.names if isinstance(feature, datasets.ClassLabel) else None
        num_labels = cfg.num_labels or (len(named) if named else max(first[col]) + 1)
        names, source = (named if named and len(named) == num_labels else [str(i) for i in range(num_labels)]), ""
    labels = datasets.ClassLabel(names=names)
    for what, ds in tables.items():
        if kind == "names":
            unseen = sorted(set(ds[col]) - set(names))
            if unseen:
                raise UsageError(f"{what}: labels not in {source}: {', '.join(map(repr, unseen[:5]))}")
        else:
            check_label_ids(ds, what, len(names), col)
        tables[what] = ds.cast_column(col, labels)
    if len(names) < 2:
        raise UsageError(f"classification needs at least 2 classes, the training labels have {len(names)}")
    train = tables.get("--train-file")
    if "--validation-file" in tables:
        val = tables["--validation-file"]
    else:
        if len(train) < 2:
            raise UsageError("--train-file: need at least 2 examples to hold out a validation split")
        train_idx, val_idx = seeded_split(len(train), cfg.validation_fraction or 0.1)
        train, val = train.select(train_idx), train.select(val_idx)

    def texts(ds):
        if ds is None:
            return [], None
        return list(ds[cfg.text_column]), (list(ds[cfg.text_pair_column]) if cfg.text_pair_column else None)

    def targets(ds):
        return torch.tensor(list(ds[col]) if ds is not None else [], dtype=torch.long)

    a_tr, b_tr = texts(train)
    if train is not None and not any(s.strip() for s in a_tr):
        raise UsageError("--train-file: every text is empty")
    raw = getattr(tokenizer, "backend_tokenizer", tokenizer) or train_tokenizer(cfg.tokenizer, a_tr + (b_tr or []),
                                                                                cfg.vocab_size)
    tok = transformers_tokenizer(raw, cfg.seq_len)
    info = {"label_names": list(names), "train_examples": len(a_tr), "val_examples": len(val),
            "validation": "--validation-file" if cfg.validation_file else f"{len(val)} held-out rows"}
    return TaskData("seqcls", {"input_ids": encode_texts(tok, *texts(train)), "labels": targets(train)},
                    {"input_ids": encode_texts(tok, *texts(val)), "labels": targets(val)},
                    vocab_size=raw.get_vocab_size(), num_labels=len(names), seq_len=cfg.seq_len, tokenizer=tok,
                    info=info)

def image_data(cfg: TrainConfig) -> TaskData:
    """Images from .npz files (raw values, not rescaled) or scikit-learn's digits (values 0..16, rescaled by 1/16),
    normalised per channel by the training images' mean and std through the HydraImageProcessor saved with the model."""
    from ..models import HydraImageProcessor

    label_names = None
    if cfg.train_file:
        x_tr, y_tr = read_npz(cfg.train_file, "--train-file")
        if cfg.validation_file:
            x_va, y_va = read_npz(cfg.validation_file, "--validation-file")
        else:
            x_tr, y_tr, x_va, y_va = split_images(x_tr, y_tr, cfg.validation_fraction or 0.2)
        source, rescale = cfg.train_file, 1.0
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UsageError("the default image data is scikit-learn's digits: pip install 'hydra-ssm[train]'") from None
        d = load_digits()
        x = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), integer values 0..16
        x_tr, y_tr, x_va, y_va = split_images(x, d.target.astype(np.int64), 0.2)
        source, rescale, label_names = "sklearn digits", 1 / 16, [str(n) for n in d.target_names]
    num_labels = cfg.num_labels or int(max(y_tr.max(), 0)) + 1
    for ys, what in ((y_tr, "--train-file"), (y_va, "--validation-file")):
        if len(ys) and (ys.min() < 0 or ys.max() >= num_labels):
            bad = ys[(ys < 0) | (ys >= num_labels)][0]
            raise UsageError(f"{what}: label {bad} out of range: labels must be in 0..{num_labels - 1}")
    if len(x_tr) == 0 or len(x_va) == 0:
        raise UsageError("the image data set has no training or no validation images")
    size = x_tr.shape[-1]
    if x_tr.shape[-2] != size:
        raise UsageError(f"images must be square, got {x_tr.shape[-2]}x{size}")
    if size % cfg.patch_size:
        raise UsageError(f"--patch-size {cfg.patch_size} must divide the image size {size}")
    if x_tr.shape[1] not in (1, 3):
        raise UsageError(f"images must have 1 or 3 channels (N, C, H, W), got {x_tr.shape[1]}")
    if x_va.shape[1:] != x_tr.shape[1:]:
        raise UsageError(f"--validation-file: images of shape {x_va.shape[1:]}, the training images are {x_tr.shape[1:]}")
    scaled = x_tr.astype(np.float64) * rescale
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    std[std == 0] = 1.0
    processor = HydraImageProcessor(num_channels=x_tr.shape[1], size={"height": size, "width": size},
                                    do_rescale=rescale != 1.0, rescale_factor=rescale,
                                    image_mean=mean.tolist(), image_std=std.tolist())

    def norm(a):
        return processor(a, input_data_format="channels_first", return_tensors="pt")["pixel_values"]

    info = {"source": source, "train_examples": len(y_tr), "val_examples": len(y_va)}
    if label_names is not None and len(label_names) == num_labels:
        info["label_names"] = label_names
    return TaskData("image", {"pixel_values": norm(x_tr), "labels": torch.from_numpy(y_tr)},
                    {"pixel_values": norm(x_va), "labels": torch.from_numpy(y_va)}, num_labels=num_labels,
                    image_size=size, num_channels=x_tr.shape[1], seq_len=(size // cfg.patch_size) ** 2 + 1,
                    image_processor=processor, info=info)


def split_images(x: np.ndarray, y: np.ndarray, fraction: float):
    """(x_train, y_train, x_val, y_val) by `seeded_split`, each part in the order of the file."""
    train_idx, val_idx = (np.sort(i) for i in seeded_split(len(y), fraction))
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]
