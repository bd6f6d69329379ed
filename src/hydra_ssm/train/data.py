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
import zipfile
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
    tok = with_special_tokens(_canonical_ids(tok))
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
    return with_special_tokens(tok)


def with_special_tokens(tok):
    """Set ``tok``'s post-processor (in place) to BERT's template and return it: one text becomes
    ``[CLS] $A [SEP]``, a pair ``[CLS] $A [SEP] $B [SEP]`` (type ids 0 for the first part, 1 for the second)."""
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    return tok


def transformers_tokenizer(tok, max_length: int = 0):
    """The tokenizer a user gets from ``AutoTokenizer.from_pretrained`` on a saved run: ``tok`` (a
    `tokenizers.Tokenizer` or a transformers tokenizer) with the special tokens named, the [CLS]/[SEP]
    post-processor and ``model_max_length = max_length`` (0: no limit). The training data is encoded by
    calling this object exactly as pipelines do, so training and inference see the same ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(getattr(tok, "backend_tokenizer", tok).to_str())  # a copy, without truncation/padding
    backend.no_truncation()
    backend.no_padding()
    kw = {"model_max_length": max_length} if max_length else {}
    # the models have no token type embeddings (type_vocab_size=0): their inputs are ids and the mask
    return PreTrainedTokenizerFast(tokenizer_object=with_special_tokens(backend), pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "attention_mask"], **kw)


def save_tokenizer(tok, directory: str) -> None:
    """Save as tokenizer.json plus the transformers files, so AutoTokenizer and pipelines find it next to the model."""
    os.makedirs(directory, exist_ok=True)
    (tok if hasattr(tok, "save_pretrained") else transformers_tokenizer(tok)).save_pretrained(directory)


def load_tokenizer(directory: str):
    """The `tokenizers.Tokenizer` of ``directory``/tokenizer.json, with the [CLS]/[SEP] post-processor
    (tokenizers saved before it existed get it here)."""
    from tokenizers import Tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise UsageError(f"no tokenizer.json in {directory}")
    return with_special_tokens(Tokenizer.from_file(path))


def encode_stream(tok, docs: list[str]) -> np.ndarray:
    """All documents as one id stream, [SEP] between documents (no [CLS]/[SEP] around each)."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(SEP)
    return np.asarray(ids, dtype=np.int64)


def encode_texts(tok, a: list[str], b: list[str] | None = None) -> list[torch.Tensor]:
    """Texts (or pairs) as pipelines encode them: ``tok(a, b, truncation=True)`` with ``tok`` from
    `transformers_tokenizer`. Truncation keeps the first model_max_length - 2 tokens (pairs: - 3, the longer
    text shortened first) and always the closing [SEP]. Returns one 1-D id tensor per example."""
    if not len(a):
        return []
    enc = tok(list(a), list(b) if b is not None else None, truncation=True)
    return [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]


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
            docs = _cap(docs, cfg.max_corpus_chars)
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
SPLIT_SEED = 12345  # the held-out rows do not depend on --seed


def _datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise UsageError("task 'classify' reads its files with the 'datasets' package: "
                         "pip install 'hydra-ssm[train]'") from None
    datasets.disable_progress_bars()
    return datasets


def read_table(path: str, what: str, cfg: TrainConfig):
    """A file of labelled texts as a `datasets.Dataset`: CSV/TSV/JSON/JSON lines/Parquet through
    ``datasets.load_dataset``, ``.txt`` as ``label<TAB>text`` lines (columns --label-column, --text-column)."""
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
    datasets = _datasets()
    if fmt == "text":
        rows = {cfg.label_column: [], cfg.text_column: []}
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise UsageError(f"{what}: {path} line {n}: expected 'label<TAB>text'")
            label, text = line.split("\t", 1)
            rows[cfg.label_column].append(label.strip())
            rows[cfg.text_column].append(text)
        return datasets.Dataset.from_dict(rows, features=datasets.Features(
            {c: datasets.Value("string") for c in rows}))
    kw = {"delimiter": "\t"} if ext == ".tsv" else {}
    try:
        return datasets.load_dataset(fmt, data_files={"data": path}, split="data", keep_in_memory=True, **kw)
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{what}: cannot read {path}: {msg}") from None


def _label_kind(ds, what: str, cfg: TrainConfig):
    """("names", ds) for text labels, ("ids", ds) for integer labels (digit strings, as .txt files give, become
    integers; a ClassLabel column stays one); anything else is an error naming the column."""
    datasets = _datasets()
    col = cfg.label_column
    feature = ds.features[col]
    values = list(ds[col])
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise UsageError(f"{what}: row {missing[0] + 1} has no label (column {col!r})")
    if isinstance(feature, datasets.ClassLabel):
        return "ids", ds
    dtype = getattr(feature, "dtype", "")
    if dtype in ("string", "large_string"):
        if all(v.strip().lstrip("-").isdigit() for v in values):
            return "ids", ds.cast_column(col, datasets.Value("int64"))
        return "names", ds
    if dtype.startswith(("int", "uint")):
        return "ids", ds
    raise UsageError(f"{what}: labels must be integers or strings; column {col!r} holds {dtype or feature}")


def _check_ids(ds, what: str, num_labels: int, col: str) -> None:
    bad = [y for y in ds[col] if not 0 <= y < num_labels]
    if bad:
        raise UsageError(f"{what}: label {bad[0]} out of range: labels must be in 0..{num_labels - 1} "
                         f"(num_labels={num_labels})")


def classify_data(cfg: TrainConfig, tokenizer=None, label_names: list[str] | None = None) -> TaskData:
    """Labelled texts: tables read with `datasets`, labels cast to a ``ClassLabel`` (text labels numbered in
    sorted order, as ``class_encode_column`` does; integer labels named "0", "1", ...), a seeded
    ``train_test_split`` when there is no --validation-file, texts encoded by the tokenizer that is saved.

    ``label_names`` (a saved model's id2label) fixes the classes; with a --validation-file the training
    file is then not read at all (evaluation).
    """
    if not cfg.train_file and not (label_names and cfg.validation_file):
        raise UsageError("task 'classify' needs --train-file (CSV, TSV, JSON lines, Parquet, or label<TAB>text .txt)")
    datasets = _datasets()
    tables = {}
    if not (label_names and cfg.validation_file):
        tables["--train-file"] = read_table(cfg.train_file, "--train-file", cfg)
    if cfg.validation_file:
        tables["--validation-file"] = read_table(cfg.validation_file, "--validation-file", cfg)
    for what, ds in tables.items():
        for col in filter(None, (cfg.text_column, cfg.text_pair_column, cfg.label_column)):
            if col not in ds.column_names:
                raise UsageError(f"{what}: no column {col!r}; columns: {', '.join(ds.column_names) or '(none)'}")
        if len(ds) == 0:
            raise UsageError(f"{what}: no examples")
        for col in filter(None, (cfg.text_column, cfg.text_pair_column)):
            if getattr(ds.features[col], "dtype", "") not in ("string", "large_string"):
                raise UsageError(f"{what}: column {col!r} must hold text, not {ds.features[col]}")
            empty = [i for i, v in enumerate(ds[col]) if v is None]
            if empty:
                raise UsageError(f"{what}: row {empty[0] + 1} has no text in column {col!r}")

    col = cfg.label_column
    kinds = {}
    for what in tables:
        kinds[what], tables[what] = _label_kind(tables[what], what, cfg)
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
            _check_ids(ds, what, len(names), col)
        tables[what] = ds.cast_column(col, labels)
    if len(names) < 2:
        raise UsageError(f"classification needs at least 2 classes, the training labels have {len(names)}")
    train = tables.get("--train-file")
    if "--validation-file" in tables:
        val = tables["--validation-file"]
    else:
        if len(train) < 2:
            raise UsageError("--train-file: need at least 2 examples to hold out a validation split")
        n_val = min(len(train) - 1, max(1, int(round(len(train) * (cfg.validation_fraction or 0.1)))))
        parts = train.train_test_split(test_size=n_val, shuffle=True, seed=SPLIT_SEED)
        train, val = parts["train"], parts["test"]

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
    if not zipfile.is_zipfile(path):  # np.load would call anything else pickled data
        raise UsageError(f"{what}: {path} is not an .npz archive; image data is written by "
                         "numpy.savez(path, images=(N, [C,] H, W) array, labels=(N,) integers)")
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
