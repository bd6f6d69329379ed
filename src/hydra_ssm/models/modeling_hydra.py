"""Hydra encoders as HuggingFace transformers models.

Read top to bottom:

1. ``HydraEmbeddings``        token (+ segment, + optional position) embeddings, LayerNorm, dropout
2. ``HydraBlock``             one sequence mixer (any registered name) with residual and LayerNorm,
                              optionally followed by an MLP
3. ``HydraEncoder``           the stack of blocks (+ final LayerNorm when pre-norm), gradient checkpointing
4. ``HydraPreTrainedModel``   init, config class, checkpointing support
5. ``HydraModel``             the text encoder (+ pooler)
6. heads                      masked LM (tied embeddings), sequence and token classification
7. ``HydraForImageClassification``  ViT-style patches through the same encoder

Padding: ``attention_mask`` (B, L), 1 = valid token, padding on the left or
right. Mixers see the mask and ignore padded tokens; position ids count valid
tokens only; pooling reads valid tokens only. So the outputs at valid positions
do not depend on how much padding a batch carries.

Packing: a batch flattened into one row, as ``transformers.DataCollatorWithFlattening``
emits it: input_ids (1, total) with ``position_ids`` restarting at 0 at every
sequence (and optionally ``cu_seq_lens_q``/``cu_seq_lens_k``, ``max_length_q``/
``max_length_k``, ``seq_idx``). The sequence offsets are derived from them
(:func:`packed_offsets`) and every mixer mixes each sequence alone; outputs
equal those of each sequence run alone, and no compute is spent on padding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import logging

from .._checks import (check_index_range, check_index_tensor, check_mask, check_sequence_input, reads_without_sync,
                       tracing, value_checks_enabled)
from ..mixers import SequenceMixer, build_mixer
from ..ops._shapes import check_cu_seqlens
from ..mixers.context_parallel import check_group, shard_layout
from .configuration_hydra import HydraConfig, HydraVisionConfig
from .streaming import mean_over_positions, stream_hidden_states

logger = logging.get_logger(__name__)

try:  # transformers >= 5 marks what its initializers touched, so loading never overwrites loaded weights
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4.x
    _init = nn.init

_TRANSFORMERS_V5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


def _padding_mask(mask: torch.Tensor | None, must_read: bool = False) -> torch.Tensor | None:
    """A checked (B, L) bool mask, or None when every token is valid (the mixers' fast path).

    Whether the mask is all ones is read only where that costs no device synchronisation (a CPU
    mask), or where the answer is needed (``must_read``: context parallelism refuses padding).
    Elsewhere the mask is kept: on a GPU, and while a graph is traced (torch.export, ONNX), where
    it is a property of the data, not of the graph. The mixers give the same outputs with an
    all-ones mask as without one."""
    if mask is None or not (reads_without_sync(mask) or (must_read and not tracing())):
        return mask
    return None if bool(mask.all()) else mask


def _offsets_from_starts(starts: torch.Tensor, total: int) -> list[int]:
    return [*starts.tolist(), total]


def packed_offsets(shape: tuple, position_ids=None, cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None,
                   max_length_k=None, seq_idx=None) -> list[int] | None:
    """The sequence offsets [0, ..., total] of a packed row (batch 1), or None for an ordinary batch.

    Read from what ``transformers.DataCollatorWithFlattening`` emits: ``position_ids`` (1, total)
    restarting at 0 at every sequence start and counting 0, 1, 2, ... inside it; ``cu_seq_lens_q`` /
    ``cu_seq_lens_k`` (n + 1,) offsets; ``seq_idx`` (1, total), the sequence of every token (0, 0,
    1, 1, 1, 2, ...); ``max_length_q`` / ``max_length_k``, the longest sequence. Every one given
    must describe the same sequences (ValueError naming it otherwise). position_ids alone that
    never restart are ordinary positions, not a packed batch. Sequences may not be empty.
    Reads the values (a host synchronisation); a packed batch cannot be traced (its lengths are
    data): while tracing, position_ids are positions and the other arguments an error.
    """
    batch, total = shape
    if tracing():
        if any(t is not None for t in (cu_seq_lens_q, cu_seq_lens_k, seq_idx)):
            raise ValueError("a packed batch (cu_seq_lens_q / cu_seq_lens_k / seq_idx) cannot be traced "
                             "(torch.compile, torch.export, ONNX): its lengths are data; trace a padded batch")
        return None  # position_ids are positions
    found = {}
    for name, offsets in (("cu_seq_lens_q", cu_seq_lens_q), ("cu_seq_lens_k", cu_seq_lens_k)):
        if offsets is not None:
            try:
                check_cu_seqlens(offsets, batch, total)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name}: {err}") from None
            found[name] = offsets.tolist()
    if seq_idx is not None:
        check_index_tensor("seq_idx", seq_idx.reshape(1, -1) if isinstance(seq_idx, torch.Tensor) and
                           seq_idx.dim() == 1 else seq_idx, (1, total))
        ids = seq_idx.reshape(-1).long()
        steps = ids[1:] - ids[:-1]
        if int(ids[0]) != 0 or not bool(((steps == 0) | (steps == 1)).all()):
            raise ValueError("seq_idx must number the packed sequences 0, 0, ..., 1, 1, ...: start at 0 and grow by "
                             "0 or 1 from token to token")
        found["seq_idx"] = _offsets_from_starts(torch.nonzero(torch.cat([ids.new_ones(1), steps])).flatten(), total)
    if position_ids is not None and batch == 1:
        pos = position_ids.reshape(-1).long()
        if found or bool((pos[1:] == 0).any()):  # a restart after the first token: a packed row
            starts = torch.nonzero(pos == 0).flatten()
            index = torch.arange(total, device=pos.device)
            begin = torch.where(pos == 0, index, 0).cummax(0).values  # the latest sequence start at or before i
            if not bool((pos == index - begin).all()):
                raise ValueError("position_ids restart at 0 (a packed batch, as DataCollatorWithFlattening emits) "
                                 "but do not count 0, 1, 2, ... inside every sequence from the first token on")
            found["position_ids"] = _offsets_from_starts(starts, total)
    if not found:
        return None
    (first_name, offsets), *others = found.items()
    for name, other in others:
        if other != offsets:
            raise ValueError(f"{name} and {first_name} describe different packed sequences")
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    if any(n == 0 for n in lengths):
        raise ValueError(f"{first_name}: every packed sequence must have at least one token, got lengths {lengths}")
    for name, value in (("max_length_q", max_length_q), ("max_length_k", max_length_k)):
        if value is not None and int(value) != max(lengths):
            raise ValueError(f"{name} is {int(value)} but the longest packed sequence has {max(lengths)} tokens")
    return offsets


IGNORE_INDEX = -100  # label of positions that take no part in a loss (CrossEntropyLoss's default)


def _token_loss(logits: torch.Tensor, labels: torch.Tensor, context_parallel_group=None) -> torch.Tensor:
    """Mean cross-entropy over the labelled entries (label != -100) of ``logits`` (..., C), ``labels`` (...).

    A batch with no labelled entry gives a loss of exactly 0 that still has a
    grad_fn (its gradient is zero), so a training step on it is a no-op instead
    of a NaN that would poison the weights. With a ``context_parallel_group``
    (each rank holds a shard of the sequences): this rank's share of the mean
    over the whole sequences, i.e. its sum divided by the group's count of
    labelled entries; the shares sum to the loss of one process.
    """
    labels = labels.to(device=logits.device, dtype=torch.long).reshape(-1)
    total = CrossEntropyLoss(reduction="sum", ignore_index=IGNORE_INDEX)(logits.reshape(-1, logits.shape[-1]), labels)
    count = (labels != IGNORE_INDEX).sum()
    if context_parallel_group is not None:
        dist.all_reduce(count, group=context_parallel_group)
    return total / count.clamp(min=1).to(total.dtype)


def _classification_loss(config: HydraConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's rule: regression for one label, cross-entropy for integer labels, BCE otherwise.
    ``logits`` (B, num_labels); labels (B,) of class ids (-100: ignored), (B,) or (B, 1) of
    targets for regression, (B, num_labels) for multi-label. The inferred problem_type is
    stored in the config (as transformers' models do) once the labels pass the checks."""
    num_labels = config.num_labels
    batch = logits.shape[0]
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem == "regression":
        if num_labels == 1:
            if labels.numel() != batch:
                raise ValueError(f"labels must have shape ({batch},) for regression, got {tuple(labels.shape)}")
            loss = MSELoss()(logits.squeeze(-1), labels.view(-1).to(logits.dtype))
        else:
            if tuple(labels.shape) != tuple(logits.shape):
                raise ValueError(f"labels must have shape {tuple(logits.shape)} for regression, got {tuple(labels.shape)}")
            loss = MSELoss()(logits, labels.to(logits.dtype))
    elif problem == "single_label_classification":
        if labels.is_floating_point() or labels.numel() != batch:
            raise ValueError(f"labels must be an integer tensor of shape ({batch},) (class ids), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")
        check_index_range("labels", labels, num_labels, ignore=IGNORE_INDEX)
        loss = _token_loss(logits, labels)
    elif problem == "multi_label_classification":
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(f"labels must have shape {tuple(logits.shape)} (one 0/1 target per label), got "
                             f"{tuple(labels.shape)}")
        loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
    else:
        raise ValueError(f"unknown problem_type {problem!r}")
    config.problem_type = problem
    return loss


def _check_token_labels(labels, shape, high: int) -> None:
    """Per-token labels (B, L) of ids in [0, high) or -100."""
    check_index_tensor("labels", labels, shape)
    check_index_range("labels", labels, high, ignore=IGNORE_INDEX)


# ---------------------------------------------------------------------------- 1. embeddings
class HydraEmbeddings(nn.Module):
    """word + token type (+ learned absolute position) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.use_position_embeddings else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, mask=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seqlen = inputs_embeds.shape[:2]
        embeddings = inputs_embeds
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(batch, seqlen, dtype=torch.long, device=embeddings.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            table = self.position_embeddings.num_embeddings
            counted = position_ids is None
            if counted and mask is None:
                position_ids = torch.arange(seqlen, device=embeddings.device).expand(batch, seqlen)
            elif counted:  # count valid tokens only, so left padding does not shift the positions
                position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
            if counted and mask is None:  # the largest position is seqlen - 1: a shape check
                too_long = not tracing() and seqlen > table
            else:  # counted ones are below seqlen: their values matter only for a longer sequence
                too_long = ((not counted or seqlen > table) and value_checks_enabled(position_ids)
                            and int(position_ids.max()) >= table)
            if too_long:
                raise ValueError(f"sequence longer than max_position_embeddings={table}")
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


# ---------------------------------------------------------------------------- 2. block
class HydraMLP(nn.Module):
    def __init__(self, config: HydraConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class HydraBlock(nn.Module):
    """Sequence mixer with a residual connection and LayerNorm, then an optional MLP.

    post-norm (reference default): ``h = norm(h + mixer(h))``, ``h = mlp_norm(h + mlp(h))``
    pre-norm:                      ``h = h + mixer(norm(h))``, ``h = h + mlp(mlp_norm(h))``
    """

    def __init__(self, config: HydraConfig, layer_idx: int, seq_len: int | None):
        super().__init__()
        self.is_prenorm = config.is_prenorm
        self.mixer = build_mixer(config.matrix_mixer_type, config.hidden_size,
                                 **config.mixer_kwargs(seq_len=seq_len, layer_idx=layer_idx))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.block_norm_eps)
        if config.intermediate_size > 0:
            self.mlp = HydraMLP(config)
            self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.block_norm_eps)
        else:
            self.mlp = None

    def _mix(self, x, mask, cu_seqlens=None, context_parallel_group=None):
        if cu_seqlens is not None:  # a packed row: each sequence mixed alone
            return self.mixer.forward_packed(x, cu_seqlens)
        if context_parallel_group is not None:  # whole, unpadded shards (checked by HydraModel)
            return self.mixer(x, context_parallel_group=context_parallel_group)
        if mask is not None:  # padded tokens enter every mixer as zeros
            x = x * mask[..., None].to(x.dtype)
        return self.mixer(x, attention_mask=mask)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, context_parallel_group=None) -> torch.Tensor:
        """``cu_seqlens``: the (n + 1,) offsets of a packed row (1, total, D), or None;
        ``context_parallel_group``: this rank holds a shard of the sequences (see HydraModel)."""
        mixer_input = self.norm(hidden_states) if self.is_prenorm else hidden_states
        return self._combine(hidden_states, self._mix(mixer_input, mask, cu_seqlens, context_parallel_group))

    def _combine(self, hidden_states: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and the mixer's output (both (B, L, D)): residuals, norms, MLP."""
        h = hidden_states
        if self.is_prenorm:
            h = h + mixed
            if self.mlp is not None:
                h = h + self.mlp(self.mlp_norm(h))
        else:
            h = self.norm(h + mixed)
            if self.mlp is not None:
                h = self.mlp_norm(h + self.mlp(h))
        return h

    def stream(self, hidden_states: torch.Tensor, segment_len: int) -> torch.Tensor:
        """``forward(hidden_states)`` written over ``hidden_states`` (B, L, D), ``segment_len`` positions at a
        time, by the mixer's ``stream`` (a mixer with ``can_stream``); the norms and the MLP act per token."""
        return self.mixer.stream(hidden_states, segment_len, out=hidden_states,
                                 prepare=self.norm if self.is_prenorm else None, finish=self._combine)


# ---------------------------------------------------------------------------- 3. encoder
class HydraEncoder(nn.Module):
    def __init__(self, config: HydraConfig, seq_len: int | None):
        super().__init__()
        config.validate_mixer()  # a config may name a mixer that was not registered when it was loaded
        self.layers = nn.ModuleList([HydraBlock(config, i, seq_len) for i in range(config.num_hidden_layers)])
        self.norm_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.is_prenorm else None
        self.gradient_checkpointing = False  # switched by PreTrainedModel.gradient_checkpointing_enable()

    def forward(self, hidden_states, mask=None, output_hidden_states=False, cu_seqlens=None,
                context_parallel_group=None):
        all_hidden = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states = self._gradient_checkpointing_func(layer.__call__, hidden_states, mask, cu_seqlens,
                                                                  context_parallel_group)
            else:
                hidden_states = layer(hidden_states, mask, cu_seqlens, context_parallel_group)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
        if self.norm_f is not None:
            hidden_states = self.norm_f(hidden_states)
            if output_hidden_states:  # the last entry is the encoder output, as in transformers' pre-norm models
                all_hidden = all_hidden[:-1] + (hidden_states,)
        return hidden_states, all_hidden


# ---------------------------------------------------------------------------- 4. base class
class HydraPreTrainedModel(PreTrainedModel):
    config_class = HydraConfig
    base_model_prefix = "hydra"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HydraBlock"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``; weights that are not a valid safetensors file raise an
        OSError naming the directory, instead of the parser's bare message."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as err:
            raise OSError(f"the safetensors weights in {pretrained_model_name_or_path} are not readable "
                          f"(truncated or corrupted file?): {err}") from err

    def post_init(self):
        if self.config.mixer_init == "own":  # the mixers' projections keep the init they were built with
            for mixer in self.modules():
                if isinstance(mixer, SequenceMixer):
                    for layer in mixer.modules():
                        if isinstance(layer, nn.Linear):
                            layer._keeps_own_init = True
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """BERT's init for Linear, Embedding and LayerNorm (mixer projections included, as in the
        reference, unless ``config.mixer_init == "own"``); mixer-specific parameters (conv, dt bias,
        A, D, ...) keep the mixer's own init."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear) and getattr(module, "_keeps_own_init", False):
            return
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
        elif isinstance(module, HydraPatchEmbeddings):
            if module.cls_token is not None:
                _init.normal_(module.cls_token, mean=0.0, std=std)
            if module.position_embeddings is not None:
                _init.normal_(module.position_embeddings, mean=0.0, std=std)


def _pool(hidden_states: torch.Tensor, mask: torch.Tensor | None, mode: str,
          cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, D) -> (B, D): first valid token ("cls") or mean of valid tokens ("mean").

    A packed row (1, total, D) with its offsets ``cu_seqlens`` (n + 1,) of non-empty sequences
    -> (n, D): the first token or the mean of each sequence."""
    if cu_seqlens is not None:
        row = hidden_states[0]
        if mode == "cls":
            return row[cu_seqlens[:-1].long()]
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        which = torch.repeat_interleave(torch.arange(len(lengths), device=row.device), lengths)
        sums = row.new_zeros(len(lengths), row.shape[-1]).index_add_(0, which, row)
        return sums / lengths[:, None].to(row.dtype)
    if mask is None:
        return hidden_states[:, 0] if mode == "cls" else hidden_states.mean(1)
    if mode == "cls":
        first = mask.long().argmax(1)  # first valid position (left padding safe)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), first]
    weights = mask[..., None].to(hidden_states.dtype)
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1)


class HydraPooler(nn.Module):
    """BERT pooler: dense + tanh on the first valid token, or on the mean of valid tokens."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.mode = config.pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states, mask=None, cu_seqlens=None):
        return self.activation(self.dense(_pool(hidden_states, mask, self.mode, cu_seqlens)))


# ---------------------------------------------------------------------------- 5. text encoder
class HydraModel(HydraPreTrainedModel):
    """The Hydra text encoder: embeddings, blocks and (optionally) the pooler.

    Inputs are checked before any computation (ValueErrors name the argument):
    exactly one of ``input_ids`` (B, L) of any integer dtype and
    ``inputs_embeds`` (B, L, hidden_size) of the model's dtype; ids, token
    types and positions inside their tables; ``attention_mask`` (B, L) of 0/1.
    ``token_type_ids`` without type embeddings (``type_vocab_size=0``) are
    accepted when all zero and refused otherwise; ``position_ids`` without
    position embeddings are refused, except as the sequence starts of a packed row.
    B = 0 gives empty outputs; L = 0 is an error.

    Packed batches (``transformers.DataCollatorWithFlattening``): input_ids (1, total)
    with position_ids restarting at 0 at each sequence, and/or ``cu_seq_lens_q`` /
    ``cu_seq_lens_k`` offsets, ``max_length_q`` / ``max_length_k``, ``seq_idx``
    (see :func:`packed_offsets`). Each sequence is mixed alone; the outputs equal
    those of each sequence run alone. Position embeddings, if any, read the given
    position_ids (counted from each sequence's start when only offsets are given);
    the pooler pools each sequence, so ``pooler_output`` is (n, D).

    Context parallelism: ``forward(..., context_parallel_group=group)`` on every
    rank of a ``torch.distributed`` group, each with one contiguous shard of the
    same sequences (rank 0 the first; shards may differ in length), gives each
    rank the outputs at its own positions, exactly as one process would (see
    ``Hydra.forward``). Needs mixers with ``context_parallel = True``, no padding
    (an all-ones mask or none), and no pooler (``add_pooling_layer=False``);
    position embeddings count from the shard's place in the whole sequence.
    """

    def __init__(self, config: HydraConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = HydraEmbeddings(config)
        self.encoder = HydraEncoder(config, seq_len=config.max_position_embeddings)
        self.pooler = HydraPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _check_inputs(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, packing=None):
        """ValueErrors naming the argument, before any computation; returns the attention mask as a bool
        tensor on the inputs' device (or None) and the offsets of a packed row (a list, or None; see
        :func:`packed_offsets`, given the ``packing`` arguments). The checks of values (ranges, a mask of
        0/1) read them on the host: they run as ``value_checks_enabled`` says (by default for CPU tensors
        only; never while compiling or exporting).

        token_type_ids with ``type_vocab_size=0`` are accepted when all zero (what tokenizers
        send for a single segment, and the same as none) and refused otherwise."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        config = self.config
        if input_ids is not None:
            check_index_tensor("input_ids", input_ids)
            if input_ids.shape[1] == 0:
                raise ValueError(f"input_ids must have at least one position, got shape {tuple(input_ids.shape)}")
            check_index_range("input_ids", input_ids, self.embeddings.word_embeddings.num_embeddings)
            shape = tuple(input_ids.shape)
        else:
            check_sequence_input(inputs_embeds, config.hidden_size, name="inputs_embeds",
                                 dtype=self.embeddings.word_embeddings.weight.dtype)
            shape = tuple(inputs_embeds.shape[:2])
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        mask = None if attention_mask is None else check_mask(attention_mask, shape, device)
        if token_type_ids is not None:
            check_index_tensor("token_type_ids", token_type_ids, shape)
            types = self.embeddings.token_type_embeddings
            if types is None:
                if value_checks_enabled(token_type_ids) and bool(token_type_ids.ne(0).any()):
                    raise ValueError("token_type_ids were given but the model has no token type embeddings "
                                     "(type_vocab_size=0): pass none (or all zeros), or use a config with type_vocab_size > 0")
            else:
                check_index_range("token_type_ids", token_type_ids, types.num_embeddings)
        if position_ids is not None:
            allowed = [(shape[1],), (1, shape[1]), shape]  # one row for the whole batch, or one per sequence
            if not isinstance(position_ids, torch.Tensor) or tuple(position_ids.shape) not in allowed:
                got = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
                raise ValueError(f"position_ids must have shape {allowed[0]}, {allowed[1]} or {allowed[2]}, got {got}")
            check_index_tensor("position_ids", position_ids.reshape(-1, shape[1]))
        # a mask with padding: position_ids are positions (they repeat 0 on left padding), not sequence starts.
        # Read (a host sync) only where a packed row is possible: one row with position_ids, or packing arguments
        may_pack = (position_ids is not None and shape[0] == 1) or any(v is not None for v in (packing or {}).values())
        padded = may_pack and mask is not None and not tracing() and not bool(mask.all())
        offsets = packed_offsets(shape, None if padded else position_ids, **(packing or {}))
        if offsets is not None and padded:
            raise ValueError("attention_mask marks padding but the batch is packed (cu_seq_lens_q / seq_idx): a "
                             "packed row has no padding; pass no attention_mask (or all ones)")
        if position_ids is not None:
            positions = self.embeddings.position_embeddings
            if positions is None and offsets is None:
                raise ValueError("position_ids were given but the model has no position embeddings "
                                 "(use_position_embeddings=False): the mixers order the tokens themselves")
            if positions is not None:
                check_index_range("position_ids", position_ids, positions.num_embeddings)
        return mask, offsets

    def _context_parallel_positions(self, shape, mask, position_ids, group):
        """Checks of a context-parallel forward (the same verdict on every rank of ``group``) and the
        position ids of this rank's shard: its positions in the whole sequence (or the given ones)."""
        check_group(group)
        if self.pooler is not None:
            raise ValueError("context_parallel_group: the pooler reads whole sequences; build the model with "
                             "add_pooling_layer=False (context parallelism computes per-token outputs)")
        for layer in self.encoder.layers:
            mixer = type(layer.mixer)
            if not mixer.context_parallel:
                raise ValueError(f"context_parallel_group: mixer {mixer.mixer_name!r} ({mixer.__name__}) cannot run "
                                 f"context-parallel (its class sets context_parallel = False)")
        layout = shard_layout(shape[0], shape[1], group, what="input_ids", padded=mask is not None,
                              device=self.embeddings.word_embeddings.weight.device)
        positions = self.embeddings.position_embeddings
        if positions is None or position_ids is not None:
            return position_ids
        if layout.total > positions.num_embeddings:
            raise ValueError(f"context parallelism: the shards make sequences of {layout.total} positions, longer "
                             f"than max_position_embeddings={positions.num_embeddings}")
        return torch.arange(layout.offset, layout.offset + shape[1], device=positions.weight.device).expand(shape)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
        context_parallel_group=None,
    ):
        """Returns ``BaseModelOutputWithPooling``: last_hidden_state (B, L, D), zero at padded
        positions; pooler_output (B, D) or None; hidden_states (embeddings + one per block) on request.
        ``output_attentions`` is accepted for API compatibility; mixers return no attention maps.
        ``cu_seq_lens_q`` ... ``seq_idx``: a packed row's sequences, as DataCollatorWithFlattening
        emits them (see the class notes); pooler_output is then (n, D).
        ``context_parallel_group``: this rank's shard of sequences split over the group (class docstring)."""
        packing = dict(cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
                       max_length_k=max_length_k, seq_idx=seq_idx)
        mask, offsets = self._check_inputs(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                           packing)
        # a packed row has no padding (checked): its mask, if any, is all ones
        mask = None if offsets is not None else _padding_mask(mask, must_read=context_parallel_group is not None)
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        cu_seqlens = None if offsets is None else torch.tensor(offsets, dtype=torch.int32, device=device)
        if cu_seqlens is not None and self.embeddings.position_embeddings is None:
            position_ids = None  # they only marked the sequence starts
        elif cu_seqlens is not None and position_ids is None:  # positions counted from each sequence's start
            starts = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1])
            position_ids = (torch.arange(offsets[-1], device=device) - starts)[None]
        if context_parallel_group is not None:
            if cu_seqlens is not None:
                raise ValueError("a packed row (position_ids restarting, cu_seq_lens_q, seq_idx) and "
                                 "context_parallel_group cannot be combined: pass one of them")
            shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
            position_ids = self._context_parallel_positions(shape, mask, position_ids, context_parallel_group)
        if token_type_ids is not None and self.embeddings.token_type_embeddings is None:
            token_type_ids = None  # all zeros (checked): the single segment, as without token types
        # any integer dtype (uint8, int16, ...) is accepted; embeddings take int64
        input_ids, token_type_ids, position_ids = (None if t is None else t.long()
                                                   for t in (input_ids, token_type_ids, position_ids))
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict

        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, mask=mask)
        hidden, all_hidden = self.encoder(hidden, mask, output_hidden_states=output_hidden_states,
                                          cu_seqlens=cu_seqlens, context_parallel_group=context_parallel_group)
        if mask is not None:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        pooled = self.pooler(hidden, mask, cu_seqlens) if self.pooler is not None else None

        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def stream_hidden_states(self, input_ids: torch.Tensor, segment_len: int, *,
                             token_type_ids: torch.Tensor | None = None, out: torch.Tensor | None = None):
        """``self(input_ids, token_type_ids=token_type_ids).last_hidden_state`` for sequences too long to
        hold in memory: (B, L, hidden_size), computed ``segment_len`` positions at a time.

        The embeddings, then each block, then the final norm run over one (B, L, hidden_size) buffer in
        place: ``out`` when given (a memory-mapped tensor from ``torch.from_file(path, shared=True, ...)``,
        say), else a new tensor on input_ids' device. Besides that buffer, working memory is that of one
        segment plus a few (B, H, P, N) states per segment, whatever L is (``Hydra.stream``). input_ids
        may live on another device than the model (the CPU for a model on a GPU): segments are moved
        one at a time. Position embeddings, if any, read the global positions 0 .. L-1.

        Every block's mixer must stream (``can_stream``: Hydra); the model must be in eval mode (no
        dropout); no attention mask (whole sequences); inference only (no autograd).
        """
        return stream_hidden_states(self, input_ids, segment_len, token_type_ids=token_type_ids, out=out)

    @torch.no_grad()
    def stream_mean_embedding(self, input_ids: torch.Tensor, segment_len: int, *,
                              token_type_ids: torch.Tensor | None = None, out: torch.Tensor | None = None):
        """The mean over positions of :meth:`stream_hidden_states`: (B, hidden_size), one vector per
        sequence, summed in float64 segment by segment. ``out`` is the hidden-state buffer, as there."""
        hidden = self.stream_hidden_states(input_ids, segment_len, token_type_ids=token_type_ids, out=out)
        return mean_over_positions(hidden, segment_len)


# ---------------------------------------------------------------------------- 6. text heads
class HydraLMHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder tied to the word embeddings (with its own bias)."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)

    def forward(self, hidden_states):
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


class HydraForMaskedLM(HydraPreTrainedModel):
    if _TRANSFORMERS_V5:
        _tied_weights_keys = {"lm_head.decoder.weight": "hydra.embeddings.word_embeddings.weight"}
    else:  # pragma: no cover - transformers 4.x
        _tied_weights_keys = ["lm_head.decoder.weight"]

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.hydra = HydraModel(config, add_pooling_layer=False)
        self.lm_head = HydraLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def stream_hidden_states(self, input_ids, segment_len, *, token_type_ids=None, out=None):
        """The encoder's last hidden state, segment by segment: :meth:`HydraModel.stream_hidden_states`."""
        return self.hydra.stream_hidden_states(input_ids, segment_len, token_type_ids=token_type_ids, out=out)

    def stream_mean_embedding(self, input_ids, segment_len, *, token_type_ids=None, out=None):
        """Its mean over positions: :meth:`HydraModel.stream_mean_embedding`."""
        return self.hydra.stream_mean_embedding(input_ids, segment_len, token_type_ids=token_type_ids, out=out)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, cu_seq_lens_q=None,
                cu_seq_lens_k=None, max_length_q=None, max_length_k=None, seq_idx=None, context_parallel_group=None):
        """``labels`` (B, L): token ids at the positions to predict, -100 elsewhere. The loss is
        the mean over the labelled positions; a batch without any is a loss of 0 (with a grad_fn).
        ``cu_seq_lens_q`` ... ``seq_idx``: a packed row's sequences (see :class:`HydraModel`).
        ``context_parallel_group``: each rank of the group holds a shard of the sequences (see
        ``HydraModel``); the loss is then this rank's share of the mean over the whole sequences
        (the shares sum to the one-process loss; sum the parameters' gradients over the group)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.hydra(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
                             max_length_k=max_length_k, seq_idx=seq_idx, context_parallel_group=context_parallel_group)
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            _check_token_labels(labels, logits.shape[:2], logits.shape[-1])
            loss = _token_loss(logits, labels, context_parallel_group)
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


class HydraForSequenceClassification(HydraPreTrainedModel):
    """Pooled output -> dropout -> linear. One label: regression (MSE); integer labels:
    single-label (cross-entropy); float labels of shape (B, num_labels): multi-label (BCE).
    A packed row of n sequences (see :class:`HydraModel`) pools and classifies each of them:
    logits (n, num_labels), labels (n,) (or (n, num_labels)), one per sequence."""

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.hydra = HydraModel(config, add_pooling_layer=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                max_length_q=None, max_length_k=None, seq_idx=None):
        """``cu_seq_lens_q`` ... ``seq_idx``: a packed row's sequences (see :class:`HydraModel`)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.hydra(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
                             max_length_k=max_length_k, seq_idx=seq_idx)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


class HydraForTokenClassification(HydraPreTrainedModel):
    """Per-token dropout -> linear; labels (B, L) with -100 at ignored (e.g. padded) positions
    (mean loss over the labelled ones; 0, with a grad_fn, when there are none)."""

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.hydra = HydraModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, cu_seq_lens_q=None,
                cu_seq_lens_k=None, max_length_q=None, max_length_k=None, seq_idx=None, context_parallel_group=None):
        """``cu_seq_lens_q`` ... ``seq_idx``: a packed row's sequences (see :class:`HydraModel`).
        ``context_parallel_group``: as in ``HydraForMaskedLM`` (the loss is this rank's share)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.hydra(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
                             max_length_k=max_length_k, seq_idx=seq_idx, context_parallel_group=context_parallel_group)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            _check_token_labels(labels, logits.shape[:2], self.num_labels)
            loss = _token_loss(logits, labels, context_parallel_group)
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


# ---------------------------------------------------------------------------- 7. images
def interpolate_pos_encoding(patch_pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Position embeddings of a (g, g) patch grid resampled to a (height, width) grid, as ViT does.

    patch_pos: (1, g*g, D), row-major over the grid -> (1, height*width, D); bicubic
    (align_corners=False), computed in float32 at least; a (g, g) target gives the input back.
    """
    grid = int(round(patch_pos.shape[1] ** 0.5))
    if grid * grid != patch_pos.shape[1]:
        raise ValueError(f"position embeddings of {patch_pos.shape[1]} patches do not form a square grid")
    dim = patch_pos.shape[-1]
    table = patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    work = table if table.dtype in (torch.float32, torch.float64) else table.float()
    out = nn.functional.interpolate(work, size=(height, width), mode="bicubic", align_corners=False)
    return out.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, height * width, dim)


class HydraPatchEmbeddings(nn.Module):
    """ViT-style: non-overlapping patches -> linear projection (a strided conv), an optional
    class token in front (pooling="cls"), optional learned position embeddings, dropout."""

    def __init__(self, config: HydraConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                    stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.pooling == "cls" else None
        self.position_embeddings = (nn.Parameter(torch.zeros(1, config.image_seq_len, config.hidden_size))
                                    if config.use_position_embeddings else None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, tokens, D) for a (grid_h, grid_w) patch grid; the class token's row is kept as trained."""
        native = self.image_size // self.patch_size
        if (grid_h, grid_w) == (native, native):
            return self.position_embeddings
        n_cls = 0 if self.cls_token is None else 1
        patches = interpolate_pos_encoding(self.position_embeddings[:, n_cls:], grid_h, grid_w)
        return torch.cat([self.position_embeddings[:, :n_cls], patches], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, [1 +] (H/p)*(W/p), D). Images of another size than config.image_size
        need ``interpolate_pos_encoding=True`` (H and W multiples of patch_size)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"pixel_values must have shape (batch, {self.num_channels}, H, W), got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():  # raw 0..255 pixels: the image processor rescales and normalises
            raise ValueError(f"pixel_values must be a floating-point tensor (the image processor's output), got "
                             f"{pixel_values.dtype}; pass images through HydraImageProcessor first")
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images (config.image_size), got "
                             f"{height}x{width}; pass interpolate_pos_encoding=True to run at another size")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"pixel_values: height and width must be multiples of patch_size={self.patch_size}, "
                             f"got {height}x{width}")
        x = self.projection(pixel_values.to(self.projection.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.position_embeddings is not None:
            x = x + self._position_embeddings(height // self.patch_size, width // self.patch_size)
        return self.dropout(x)


class HydraVisionModel(HydraPreTrainedModel):
    """The Hydra image encoder: patch embeddings and blocks; ``pooler_output`` is the class
    token (pooling="cls") or the mean over patches (pooling="mean")."""

    config_class = HydraVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.embeddings = HydraPatchEmbeddings(config)
        self.encoder = HydraEncoder(config, seq_len=config.image_seq_len)
        self.post_init()

    def forward(self, pixel_values=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                interpolate_pos_encoding: bool | None = None):
        """pixel_values (B, C, H, W) -> ``BaseModelOutputWithPooling``: last_hidden_state (B, tokens, D),
        pooler_output (B, D). ``interpolate_pos_encoding=True`` runs images of another size than
        config.image_size (position embeddings resampled bicubically, as in ViT)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        embedded = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        hidden, all_hidden = self.encoder(embedded, None, output_hidden_states=output_hidden_states)
        out = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=_pool(hidden, None, self.config.pooling),
                                         hidden_states=all_hidden)
        return out if return_dict else out.to_tuple()


class HydraForImageClassification(HydraPreTrainedModel):
    config_class = HydraVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: HydraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.hydra = HydraVisionModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, interpolate_pos_encoding: bool | None = None):
        """pixel_values (B, C, H, W), labels (B,) -> ``ImageClassifierOutput`` (logits (B, num_labels))."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.hydra(pixel_values, output_hidden_states=output_hidden_states, return_dict=True,
                             interpolate_pos_encoding=interpolate_pos_encoding)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


__all__ = [
    "HydraPreTrainedModel",
    "HydraModel",
    "HydraForMaskedLM",
    "HydraForSequenceClassification",
    "HydraForTokenClassification",
    "HydraVisionModel",
    "HydraForImageClassification",
]
