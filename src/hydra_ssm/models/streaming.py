"""A text encoder's hidden states over one very long sequence, computed segment by segment.

:meth:`HydraModel.stream_hidden_states` runs the encoder over a (B, L, D) buffer in
place, one stage after the other, each stage over the segments in order:

1. the embeddings, per segment (positions are the global ones);
2. each block: its mixer's ``stream`` (two passes, ``Hydra.stream``), with the
   block's norms, residuals and MLP applied per token inside those passes;
3. the final LayerNorm (pre-norm models), per segment.

Nothing but the buffer grows with L. The functions here take the model's parts
as arguments; the model classes in ``modeling_hydra`` call them.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_ints


def check_streamable(model) -> None:
    """Every block's mixer can stream and the model is in eval mode; else a ValueError saying why."""
    if model.training:
        raise ValueError("stream_hidden_states computes inference outputs (no dropout): call model.eval() first")
    for index, layer in enumerate(model.encoder.layers):
        mixer = layer.mixer
        if not getattr(mixer, "can_stream", False):
            raise ValueError(
                f"stream_hidden_states needs mixers that stream (can_stream = True, as 'hydra'); the mixer of "
                f"block {index} is {getattr(mixer, 'mixer_name', '') or type(mixer).__name__!r} "
                f"({type(mixer).__name__}), which computes whole sequences only: use model(input_ids) instead")


def segments(length: int, segment_len: int):
    """Consecutive slices of ``segment_len`` positions (the last one shorter) covering 0 .. length-1."""
    return [slice(start, min(start + segment_len, length)) for start in range(0, length, segment_len)]


def stream_hidden_states(model, input_ids: torch.Tensor, segment_len: int, *, token_type_ids=None, out=None):
    """``model(input_ids, token_type_ids=...).last_hidden_state`` (B, L, D), written into ``out`` (see
    :meth:`HydraModel.stream_hidden_states`). Every argument is checked before any computation."""
    check_positive_ints(segment_len=segment_len)
    check_streamable(model)
    model._check_inputs(input_ids, None, token_type_ids, None, None, {})  # ids and token types, as forward does
    embeddings = model.embeddings
    batch, length = input_ids.shape
    positions = embeddings.position_embeddings
    if positions is not None and length > positions.num_embeddings:
        raise ValueError(f"input_ids has {length} positions but the model's position embeddings end at "
                         f"max_position_embeddings={positions.num_embeddings}")
    weight = embeddings.word_embeddings.weight
    shape = (batch, length, model.config.hidden_size)
    if out is None:
        out = torch.empty(shape, dtype=weight.dtype, device=input_ids.device)
    elif not isinstance(out, torch.Tensor) or tuple(out.shape) != shape or out.dtype != weight.dtype:
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out must be a tensor of shape {shape} and the model's dtype {weight.dtype}, got {got}")
    if embeddings.token_type_embeddings is None:
        token_type_ids = None  # all zeros (checked): the single segment
    if batch == 0:
        return out

    device = weight.device
    for part in segments(length, segment_len):
        ids = input_ids[:, part].to(device=device, dtype=torch.long)
        types = None if token_type_ids is None else token_type_ids[:, part].to(device=device, dtype=torch.long)
        where = None if positions is None else torch.arange(part.start, part.stop, device=device).expand_as(ids)
        out[:, part] = embeddings(input_ids=ids, token_type_ids=types, position_ids=where).to(out.device)
    for layer in model.encoder.layers:
        layer.stream(out, segment_len)
    norm_f = model.encoder.norm_f
    if norm_f is not None:
        for part in segments(length, segment_len):
            out[:, part] = norm_f(out[:, part].to(device)).to(out.device)
    return out


def mean_over_positions(hidden: torch.Tensor, segment_len: int) -> torch.Tensor:
    """(B, L, D) -> (B, D) in hidden's dtype, summed in float64 one segment at a time (no L-sized temporaries)."""
    total = hidden.new_zeros(hidden.shape[0], hidden.shape[2], dtype=torch.float64)
    for part in segments(hidden.shape[1], segment_len):
        total = total + hidden[:, part].sum(1, dtype=torch.float64)
    return (total / hidden.shape[1]).to(hidden.dtype)
