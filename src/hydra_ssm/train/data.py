"""Data for the training tasks: the embedded default corpus, local files, tokenizers, batching.

Every dataset here is a list/tensor held in memory and indexed by position, so a
training step's batch is a pure function of (seed, step): resuming needs no
iterator state, and processes under torchrun each take their slice of the same
global batch.
"""

from __future__ import annotations

import json
import os
import sysconfig
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import TrainConfig, UsageError, _split_paths

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)


# ---------------------------------------------------------------------------------------------- text corpus
def default_corpus(max_chars: int = 0) -> tuple[list[str], list[str]]:
    """Text that ships with the interpreter: pydoc topics and stdlib sources, split train/validation.

    Documents are taken in a fixed order (topics by name, then files by relative
    path, skipping tests and site-packages); a document goes to validation when
    crc32 of its name is 0 mod 20, so the split does not depend on the seed.
    """
    docs: list[tuple[str, str]] = []
    try:
        from pydoc_data.topics import topics
        docs += [(f"topic:{k}", topics[k]) for k in sorted(topics)]
    except ImportError:  # pragma: no cover - stripped interpreters
        pass
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = rel.split(os.sep)
        if any(p in ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__") or p.startswith("lib2to3")
               for p in parts):
            dirnames[:] = []
            continue
        dirnames.sort()
        paths += [os.path.join(rel, f) for f in sorted(filenames) if f.endswith(".py")]
    for rel in sorted(paths):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as fh:
                docs.append((rel, fh.read()))
        except (UnicodeDecodeError, OSError):
            continue
    train, val, total = [], [], 0
    for name, text in docs:
        if max_chars and total >= max_chars:
            break
        text = text[: max(0, max_chars - total)] if max_chars else text
        total += len(text)
        (val if zlib.crc32(name.encode()) % 20 == 0 else train).append(text)
    return train, val


def read_text_files(paths: list[str], what: str) -> list[str]:
    """UTF-8 text files, one document per file; undecodable bytes are an error naming file and offset."""
    out = []
    for p in paths:
        files = [os.path.join(dp, f) for dp, _, fs in os.walk(p) for f in sorted(fs)] if os.path.isdir(p) else [p]
        for path in sorted(files):
            with open(path, "rb") as fh:
                raw = fh.read()
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise UsageError(f"{what}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return out


def split_docs(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by content hash; at least one document on each side when there are two."""
    if fraction <= 0 or len(docs) < 2:
        return docs, []
    bucket = int(round(1 / fraction))
    val = [d for d in docs if zlib.crc32(d.encode("utf-8", "replace")) % bucket == 0]
    train = [d for d in docs if zlib.crc32(d.encode("utf-8", "replace")) % bucket != 0]
    if not val:
        train, val = docs[:-1], docs[-1:]
    if not train:
        train, val = docs[1:], docs[:1]
    return train, val


# ---------------------------------------------------------------------------------------------- tokenizers
def train_tokenizer(kind: str, texts, vocab_size: int):
    """A `tokenizers.Tokenizer` trained on ``texts`` (an iterable of strings)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
        tok.train_from_iterator(texts, trainer)
    elif kind in ("bpe", "byte"):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        size = len(alphabet) + len(SPECIALS) if kind == "byte" else vocab_size
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(texts if kind == "bpe" else [""], trainer)
    else:  # pragma: no cover - validated in the config
        raise UsageError(f"unknown tokenizer {kind!r}")
    tok = _canonical_ids(tok)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def _canonical_ids(tok):
    """The trainers learn a deterministic vocabulary (and merges) but number it in hash-map order;
    renumber it (specials first, then sorted) so one corpus always gives the same ids."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    rest = sorted(t for t in vocab if t not in SPECIALS)
    spec["model"]["vocab"] = {t: i for i, t in enumerate(SPECIALS + rest)}
    return Tokenizer.from_str(json.dumps(spec))


def word_level_tokenizer(words: list[str]):
    """A fixed word-level vocabulary (synthetic tasks): specials first, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def save_tokenizer(tok, directory: str) -> None:
    """Save as tokenizer.json plus the transformers files, so pipelines find it next to the model."""
    from transformers import PreTrainedTokenizerFast

    os.makedirs(directory, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(directory)


def load_tokenizer(directory: str):
    from tokenizers import Tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise UsageError(f"no tokenizer.json in {directory}")
    return Tokenizer.from_file(path)


def encode_stream(tok, docs: list[str]) -> np.ndarray:
    """All documents as one id stream, [SEP] between documents."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(SEP)
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- task data
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


def _chunks(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    body = seq_len - 2
    n = len(stream) // body
    x = torch.from_numpy(stream[: n * body].reshape(n, body).copy())
    return torch.cat([torch.full((n, 1), CLS), x, torch.full((n, 1), SEP)], 1)


def mlm_data(cfg: TrainConfig, tokenizer=None) -> TaskData:
    if cfg.train_file:
        train_docs = read_text_files(_split_paths(cfg.train_file), "--train-file")
        if cfg.max_corpus_chars:
            train_docs = _cap(train_docs, cfg.max_corpus_chars)
        if cfg.validation_file:
            val_docs = read_text_files(_split_paths(cfg.validation_file), "--validation-file")
        else:
            train_docs, val_docs = split_docs(train_docs, cfg.validation_fraction or 0.05)
        source = cfg.train_file
    else:
        train_docs, val_docs = default_corpus(cfg.max_corpus_chars)
        source = "python stdlib (pydoc topics + sources)"
    if not any(d.strip() for d in train_docs):
        raise UsageError(f"the training corpus is empty ({source})")
    if not any(d.strip() for d in val_docs):
        raise UsageError(f"the validation corpus is empty ({cfg.validation_file or source}); add text or a --validation-file")
    tok = tokenizer or train_tokenizer(cfg.tokenizer, train_docs, cfg.vocab_size)
    train = _chunks(encode_stream(tok, train_docs), cfg.seq_len)
    val = _chunks(encode_stream(tok, val_docs), cfg.seq_len)
    if len(train) == 0 or len(val) == 0:
        raise UsageError(f"the corpus is too small for --seq-len {cfg.seq_len}: "
                         f"{len(train)} training and {len(val)} validation sequences")
    return TaskData("mlm", {"input_ids": train}, {"input_ids": val}, vocab_size=tok.get_vocab_size(),
                    seq_len=cfg.seq_len, tokenizer=tok,
                    info={"source": source, "train_chars": sum(map(len, train_docs)),
                          "val_chars": sum(map(len, val_docs)), "train_sequences": len(train), "val_sequences": len(val)})


def _cap(docs, max_chars):
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d[: max_chars - total])
        total += len(out[-1])
    return out


# -- classification from files
_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def _read_table(path: str, what: str, cfg: TrainConfig):
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise UsageError(f"{what}: {path}: unsupported extension {ext!r}; use one of {', '.join(sorted(_FORMATS))}")
    fmt = _FORMATS[ext]
    if fmt in ("csv", "json", "text"):
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"{what}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if fmt == "text":  # label<TAB>text per line
        rows = {cfg.label_column: [], cfg.text_column: []}
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise UsageError(f"{what}: {path} line {n}: expected 'label<TAB>text'")
            label, text = line.split("\t", 1)
            rows[cfg.label_column].append(label.strip())
            rows[cfg.text_column].append(text)
        return rows
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
        datasets.disable_progress_bars()
        kw = {"delimiter": "\t"} if ext == ".tsv" else {}
        ds = datasets.load_dataset(fmt, data_files={"data": path}, split="data", keep_in_memory=True, **kw)
    except ImportError:
        raise UsageError("reading CSV/JSON/Parquet needs the 'datasets' package: pip install 'hydra-ssm[train]'") from None
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{what}: cannot read {path}: {msg}") from None
    return {c: ds[c] for c in ds.column_names}


def classify_data(cfg: TrainConfig, tokenizer=None) -> TaskData:
    if not cfg.train_file:
        raise UsageError("task 'classify' needs --train-file (CSV, TSV, JSON lines, Parquet, or label<TAB>text .txt)")
    train_rows = _read_table(cfg.train_file, "--train-file", cfg)
    val_rows = _read_table(cfg.validation_file, "--validation-file", cfg) if cfg.validation_file else None
    for rows, what in ((train_rows, "--train-file"), (val_rows, "--validation-file")):
        if rows is None:
            continue
        for col in filter(None, (cfg.text_column, cfg.text_pair_column, cfg.label_column)):
            if col not in rows:
                raise UsageError(f"{what}: no column {col!r}; columns: {', '.join(rows) or '(none)'}")
        if len(rows[cfg.label_column]) == 0:
            raise UsageError(f"{what}: no examples")
    if val_rows is None:
        n = len(train_rows[cfg.label_column])
        if n < 2:
            raise UsageError("--train-file: need at least 2 examples to hold out a validation split")
        perm = np.random.default_rng(12345).permutation(n)
        n_val = max(1, int(round(n * (cfg.validation_fraction or 0.1))))
        vi, ti = sorted(perm[:n_val]), sorted(perm[n_val:])
        val_rows = {k: [v[i] for i in vi] for k, v in train_rows.items()}
        train_rows = {k: [v[i] for i in ti] for k, v in train_rows.items()}

    labels_tr, labels_va = train_rows[cfg.label_column], val_rows[cfg.label_column]
    label_names = None
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_tr + labels_va):
        y_tr, y_va = [int(v) for v in labels_tr], [int(v) for v in labels_va]
    elif all(isinstance(v, str) for v in labels_tr + labels_va) and all(v.strip().lstrip("-").isdigit() for v in labels_tr + labels_va):
        y_tr, y_va = [int(v) for v in labels_tr], [int(v) for v in labels_va]
    elif all(isinstance(v, str) for v in labels_tr + labels_va):
        label_names = sorted(set(labels_tr))
        index = {name: i for i, name in enumerate(label_names)}
        unseen = sorted(set(labels_va) - set(index))
        if unseen:
            raise UsageError(f"--validation-file: labels not in the training data: {', '.join(map(repr, unseen[:5]))}")
        y_tr, y_va = [index[v] for v in labels_tr], [index[v] for v in labels_va]
    else:
        bad = next(v for v in labels_tr + labels_va if not isinstance(v, (int, str, np.integer)) or isinstance(v, bool))
        raise UsageError(f"labels must be integers or strings; found {bad!r} in column {cfg.label_column!r}")
    num_labels = cfg.num_labels or (len(label_names) if label_names else max(y_tr) + 1)
    for ys, what in ((y_tr, "--train-file"), (y_va, "--validation-file")):
        bad = [y for y in ys if not 0 <= y < num_labels]
        if bad:
            raise UsageError(f"{what}: label {bad[0]} out of range: labels must be in 0..{num_labels - 1} "
                             f"(num_labels={num_labels})")
    if num_labels < 2:
        raise UsageError(f"classification needs at least 2 classes, the training labels have {num_labels}")

    def texts(rows):
        a = rows[cfg.text_column]
        b = rows[cfg.text_pair_column] if cfg.text_pair_column else None
        for col, vals in ((cfg.text_column, a), (cfg.text_pair_column, b)):
            if vals is not None and not all(isinstance(v, str) for v in vals):
                raise UsageError(f"column {col!r} must hold text")
        return a, b

    a_tr, b_tr = texts(train_rows)
    a_va, b_va = texts(val_rows)
    if not any(s.strip() for s in a_tr):
        raise UsageError("--train-file: every text is empty")
    tok = tokenizer or train_tokenizer(cfg.tokenizer, list(a_tr) + list(b_tr or []), cfg.vocab_size)

    def encode(a, b):
        out = []
        ea = tok.encode_batch(a, add_special_tokens=False)
        eb = tok.encode_batch(b, add_special_tokens=False) if b is not None else [None] * len(a)
        for x, y in zip(ea, eb):
            ids = [CLS] + x.ids + [SEP] + ((y.ids + [SEP]) if y is not None else [])
            out.append(torch.tensor(ids[: cfg.seq_len], dtype=torch.long))
        return out

    info = {"label_names": label_names, "train_examples": len(y_tr), "val_examples": len(y_va)}
    return TaskData("seqcls", {"input_ids": encode(a_tr, b_tr), "labels": torch.tensor(y_tr)},
                    {"input_ids": encode(a_va, b_va), "labels": torch.tensor(y_va)},
                    vocab_size=tok.get_vocab_size(), num_labels=num_labels, seq_len=cfg.seq_len, tokenizer=tok, info=info)


# -- images
def image_data(cfg: TrainConfig) -> TaskData:
    """Images from .npz files (raw values, not rescaled) or scikit-learn's digits (values 0..16, rescaled by 1/16),
    normalised per channel by the training images' mean and std through the HydraImageProcessor saved with the model."""
    from ..models import HydraImageProcessor

    label_names = None
    if cfg.train_file:
        x_tr, y_tr = _read_npz(cfg.train_file, "--train-file")
        if cfg.validation_file:
            x_va, y_va = _read_npz(cfg.validation_file, "--validation-file")
        else:
            x_tr, y_tr, x_va, y_va = _split_arrays(x_tr, y_tr, cfg.validation_fraction or 0.2)
        source, rescale = cfg.train_file, 1.0
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UsageError("the default image data is scikit-learn's digits: pip install 'hydra-ssm[train]'") from None
        d = load_digits()
        x = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), integer values 0..16
        x_tr, y_tr, x_va, y_va = _split_arrays(x, d.target.astype(np.int64), 0.2)
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


def _read_npz(path, what):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise UsageError(f"{what}: {path} must hold arrays 'images' (N, [C,] H, W) and 'labels' (N,)")
            x, y = z["images"].astype(np.float32), z["labels"]
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"{what}: cannot read {path} as .npz: {err}") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{what}: {path}: need images (N, [C,] H, W) and integer labels (N,)")
    return x, y.astype(np.int64)


def _split_arrays(x, y, fraction):
    perm = np.random.default_rng(12345).permutation(len(y))
    n_val = max(1, int(round(len(y) * fraction)))
    vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[ti], y[ti], x[vi], y[vi]


# ---------------------------------------------------------------------------------------------- batching
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


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
    os.replace(tmp, path)
