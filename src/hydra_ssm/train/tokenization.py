"""Tokenizers: training one (`tokenizers`), the [CLS]/[SEP] post-processor, the transformers tokenizer saved beside
a model, and encoding texts the way pipelines do.

The special tokens are the first five ids of every vocabulary (``SPECIALS``; named by ``PAD`` ... ``MASK``).
The module is not named ``tokenizers`` so that it never reads as the package it imports.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .config import UsageError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

PAD, UNK, CLS, SEP, MASK = range(5)


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
