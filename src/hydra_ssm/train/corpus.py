"""Text documents for masked-LM training: the corpus shipped with the interpreter, local text files, and the
held-out split by content hash (independent of --seed, so a resumed or repeated run holds out the same documents)."""

from __future__ import annotations

import os
import sysconfig
import zlib

from .config import UsageError


def hash_bucket(key: str, buckets: int) -> int:
    """crc32 of ``key``'s UTF-8 bytes modulo ``buckets``: a document is held out when this is 0."""
    return zlib.crc32(key.encode("utf-8", "replace")) % buckets


_SKIPPED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")


def stdlib_sources() -> list[tuple[str, str]]:
    """(path relative to the standard library, source text) of the interpreter's own ``.py`` files, in sorted
    path order; tests, site-packages and lib2to3 are skipped, as are files that are not UTF-8."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)  # "." at the top: names like "./abc.py" (the split hashes them)
        if any(p in _SKIPPED_DIRS or p.startswith("lib2to3") for p in rel.split(os.sep)):
            dirnames[:] = []
            continue
        dirnames.sort()
        paths += [os.path.join(rel, f) for f in sorted(filenames) if f.endswith(".py")]
    out = []
    for rel in sorted(paths):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as fh:
                out.append((rel, fh.read()))
        except (UnicodeDecodeError, OSError):
            continue
    return out


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
    docs += stdlib_sources()
    train, val, total = [], [], 0
    for name, text in docs:
        if max_chars and total >= max_chars:
            break
        text = text[: max(0, max_chars - total)] if max_chars else text
        total += len(text)
        (val if hash_bucket(name, 20) == 0 else train).append(text)
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
    val = [d for d in docs if hash_bucket(d, bucket) == 0]
    train = [d for d in docs if hash_bucket(d, bucket) != 0]
    if not val:
        train, val = docs[:-1], docs[-1:]
    if not train:
        train, val = docs[1:], docs[:1]
    return train, val

def cap_chars(docs: list[str], max_chars: int) -> list[str]:
    """The first ``max_chars`` characters of ``docs`` (the last document kept cut short)."""
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d[: max_chars - total])
        total += len(out[-1])
    return out
