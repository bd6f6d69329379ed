"""Files of labelled examples: tables of texts (CSV, TSV, JSON, JSON lines, Parquet through ``datasets``; ``.txt`` as
``label<TAB>text`` lines) and arrays of images (``.npz``). Every problem is a `UsageError` naming the option and file."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from .config import TrainConfig, UsageError

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def import_datasets():
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
    datasets = import_datasets()
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


def check_columns(ds, what: str, cfg: TrainConfig) -> None:
    """``ds`` has the text (and pair) and label columns, at least one row, and text in every text cell."""
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


def label_kind(ds, what: str, cfg: TrainConfig):
    """("names", ds) for text labels, ("ids", ds) for integer labels (digit strings, as .txt files give, become
    integers; a ClassLabel column stays one); anything else is an error naming the column."""
    datasets = import_datasets()
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

def check_label_ids(ds, what: str, num_labels: int, col: str) -> None:
    bad = [y for y in ds[col] if not 0 <= y < num_labels]
    if bad:
        raise UsageError(f"{what}: label {bad[0]} out of range: labels must be in 0..{num_labels - 1} "
                         f"(num_labels={num_labels})")

def read_npz(path: str, what: str):
    """(images (N, C, H, W) float32, labels (N,) int64) of an .npz archive holding 'images' and 'labels'."""
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
