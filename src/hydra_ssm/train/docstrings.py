"""A real, labelled short-text task that ships with Python: which part of the standard library a docstring
documents.

Every function, class and method docstring in the interpreter's own sources is an English summary written by
a person; the module it documents is its label. The texts come from ``ast`` (nothing is imported), the
labels are eleven topics, each a set of standard-library modules (email, the web, XML, concurrency, files,
numbers, testing and debugging, the GUI toolkit, the language's own tools, data formats, networking). A text
is the docstring's first paragraph, whitespace collapsed. Texts that occur under two topics, or twice, are
dropped; each topic keeps at most ``per_topic`` texts (its first, in source order); the split is by a hash of
the text, so it does not depend on a seed and a text never sits on both sides, and the files list the rows in
the order of that hash (topics mixed, so that any first rows are a fair sample).

The texts depend on the Python version (its docstrings change between releases): record it with the results.
The masked-LM corpus (:func:`hydra_ssm.train.corpus.default_corpus`) holds these sources too, labels aside,
as a pretraining corpus holds the text of a downstream task.
"""

from __future__ import annotations

import ast
import csv
import os
import re

from .corpus import hash_bucket, stdlib_sources

#: topic -> the standard-library modules and packages (first path component, ".py" dropped) it is made of
TOPICS: dict[str, tuple[str, ...]] = {
    "email": ("email", "mailbox", "smtplib", "imaplib", "poplib", "mimetypes", "quopri", "base64", "uu"),
    "web": ("http", "urllib", "html", "xmlrpc", "wsgiref", "webbrowser", "cgi", "cgitb", "cookiejar"),
    "xml": ("xml", "plistlib"),
    "concurrency": ("asyncio", "concurrent", "multiprocessing", "threading", "queue", "sched", "subprocess"),
    "files": ("pathlib", "shutil", "glob", "tempfile", "zipfile", "tarfile", "gzip", "bz2", "lzma", "fileinput",
              "filecmp", "os", "ntpath", "posixpath", "genericpath", "stat", "zipimport", "fnmatch"),
    "numbers": ("_pydecimal", "fractions", "statistics", "random", "numbers", "colorsys"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "profile", "cProfile", "pstats", "timeit",
                "tracemalloc", "faulthandler"),
    "gui": ("tkinter", "turtle", "turtledemo"),
    "language": ("ast", "dis", "inspect", "tokenize", "symtable", "compileall", "py_compile", "importlib",
                 "pkgutil", "typing", "types", "abc", "dataclasses", "enum", "functools", "codeop", "code",
                 "pyclbr", "opcode", "keyword", "token"),
    "data": ("json", "pickle", "pickletools", "shelve", "dbm", "sqlite3", "copyreg", "csv", "configparser",
             "tomllib", "netrc", "copy"),
    "network": ("socket", "ssl", "selectors", "socketserver", "ipaddress", "ftplib", "telnetlib", "nntplib",
                "smtpd", "asynchat", "asyncore"),
}

_MODULE_TOPIC = {module: topic for topic, modules in TOPICS.items() for module in modules}


def _summary(doc: str, max_chars: int) -> str:
    """The docstring's first paragraph, whitespace collapsed, cut at a word boundary to ``max_chars``."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0]
    return text


def docstring_topics(per_topic: int = 600, min_words: int = 4, max_chars: int = 200) -> list[dict]:
    """Rows ``{"text", "label", "module"}``, in source order: every docstring of a function, class or method of
    a module in :data:`TOPICS` whose first paragraph has at least ``min_words`` words."""
    seen: dict[str, str | None] = {}  # text -> its topic, None once it has occurred under two
    rows = []
    for rel, source in stdlib_sources():
        first = os.path.normpath(rel).split(os.sep)[0]
        topic = _MODULE_TOPIC.get(first[:-3] if first.endswith(".py") else first)
        if topic is None:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = _summary(doc, max_chars)
            if len(text.split()) < min_words or not re.search("[A-Za-z]", text):
                continue
            if text in seen:
                if seen[text] != topic:
                    seen[text] = None
                continue
            seen[text] = topic
            rows.append({"text": text, "label": topic, "module": os.path.normpath(rel)})
    rows = [r for r in rows if seen[r["text"]] is not None]
    kept, count = [], {}
    for r in rows:
        if count.get(r["label"], 0) < per_topic:
            count[r["label"]] = count.get(r["label"], 0) + 1
            kept.append(r)
    return kept


def write_docstring_topics(directory: str, validation_every: int = 5, **kw) -> tuple[str, str]:
    """Write ``train.csv`` and ``validation.csv`` (columns text, label, module) into ``directory``; a text goes
    to validation when the crc32 of its UTF-8 bytes is 0 mod ``validation_every``. Returns the two paths."""
    from .checkpoints import atomic_write

    rows = sorted(docstring_topics(**kw), key=lambda r: (hash_bucket(r["text"], 2**31), r["text"]))  # mixed topics
    paths = []
    for name, keep in (("train.csv", lambda r: hash_bucket(r["text"], validation_every) != 0),
                       ("validation.csv", lambda r: hash_bucket(r["text"], validation_every) == 0)):
        path = os.path.join(directory, name)

        def write(fh, part=[r for r in rows if keep(r)]):
            w = csv.DictWriter(fh, fieldnames=["text", "label", "module"], lineterminator="\n")
            w.writeheader()
            w.writerows(part)

        atomic_write(path, write)
        paths.append(path)
    return paths[0], paths[1]
