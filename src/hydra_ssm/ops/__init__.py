"""Functional operators: device-agnostic, differentiable, layout (B, L, H, P).

Every fast path has an obviously-correct reference beside it:

==========================  =====================================  ==========================
operator                    fast path                              references
==========================  =====================================  ==========================
causal SSD (Mamba-2)        :func:`semiseparable_chunked`          :func:`semiseparable_ref`,
                                                                   :func:`semiseparable_loop`,
                                                                   :func:`semiseparable_matrix`
Hydra (quasiseparable)      :func:`quasiseparable_chunked` (fused) :func:`quasiseparable_ref`,
                            :func:`quasiseparable_two_pass`,       :func:`quasiseparable_matrix`
                            :func:`quasiseparable_minimal` (export)
Toeplitz (FFT)               :func:`toeplitz_fft`                   :func:`toeplitz_ref`, :func:`toeplitz_matrix`
low-rank (associativity)    :func:`low_rank_mix`                   :func:`low_rank_ref`, :func:`low_rank_matrix`
Vandermonde (tiled)         :func:`vandermonde_mix`,               :func:`vandermonde_ref`, :func:`vandermonde_matrix`,
                            :func:`dft_cos_mix`                    :func:`dft_cos_ref`, :func:`dft_cos_matrix`
Cauchy (tiled)              :func:`cauchy_mix`                     :func:`cauchy_ref`, :func:`cauchy_matrix`
gated diagonal (GLA,        :func:`gated_chunked`,                 :func:`gated_ref`, :func:`gated_loop`,
complex/signed SSMs)        :func:`bi_gated_chunked` (Hydra's      :func:`gated_matrix`, :func:`bi_gated_ref`,
                            construction)                          :func:`bi_gated_matrix`
delta rule (DeltaNet,       :func:`delta_chunked` (WY/UT),         :func:`delta_ref`, :func:`delta_loop`,
DeltaProduct), causal and   :func:`bi_delta_chunked`               :func:`delta_matrix`, :func:`bi_delta_ref`,
bidirectional                                                      :func:`bi_delta_matrix`
==========================  =====================================  ==========================

Hydra over a sequence cut into segments (streaming, context parallelism):
:func:`segment_summary` (what a segment hands on in each direction),
:func:`entering_states` (the summaries composed in order) and
:func:`entering_state_readout` (what the entering states add to a segment's
outputs), in ``boundary.py``; tested against the whole sequence's reference.

Arguments of the scans (causal SSD and Hydra, fast paths and references alike),
checked before any computation (details in ``_shapes``):

* shapes are checked (``ValueError`` naming the argument); every tensor must be
  floating point (``TypeError``: an integer ``x`` is not truncated silently) and
  on x's device; floating dtypes may be mixed: the work is done in float64 if any
  input is float64, else in float32, and the output has x's dtype;
* ``dt`` must be >= 0 (``ValueError``); dt = 0 skips a position, exactly,
  gradients included;
* batch 0 or length 0 give an empty output of the right shape, with gradients;
* every scan above takes packed batches, the causal SSD's
  (:func:`semiseparable_chunked`, :func:`semiseparable_ref`) and Hydra's
  (``quasiseparable_*``) alike (not :func:`semiseparable_loop`): ``cu_seqlens``
  (n + 1,) integer offsets of n sequences back to back in one row (1, total, ...);
  each is mixed as if it were alone, the initial states entering every one. The
  chunked scans run them all in one scan (``quasiseparable_two_pass``: two causal
  ones), the references and ``quasiseparable_minimal`` loop over the sequences.
  The causal SSD's final states are then one per sequence, (n, H, P, N);
* NaN and inf are not looked for: they propagate. The ops are pure functions and
  a check would cost a pass and a host synchronisation per call; the layers in
  ``hydra_ssm.mixers`` check what they are given;
* the checks that read values (``dt >= 0`` here, a finite input and a mask of
  0/1 in the layers) synchronise a GPU with the host, so by default they run on
  CPU tensors only: ``hydra_ssm.set_validation(True)`` (``with
  hydra_ssm.validation(True):``, or the environment variable
  ``HYDRA_SSM_VALIDATE=1``) runs them on every device, ``set_validation(False)``
  nowhere. None runs while a graph is traced.
"""

from .reference import (
    quasiseparable_matrix,
    quasiseparable_ref,
    semiseparable_loop,
    semiseparable_matrix,
    semiseparable_ref,
)
from .semiseparable import semiseparable_chunked
from .quasiseparable import quasiseparable_chunked, quasiseparable_two_pass
from .minimal import quasiseparable_minimal
from .toeplitz import toeplitz_fft, toeplitz_matrix, toeplitz_ref
from .low_rank import low_rank_matrix, low_rank_mix, low_rank_ref
from .vandermonde import dft_cos_matrix, dft_cos_mix, dft_cos_ref, vandermonde_matrix, vandermonde_mix, vandermonde_ref
from .cauchy import cauchy_matrix, cauchy_mix, cauchy_ref
from .gated import bi_gated_chunked, bi_gated_matrix, bi_gated_ref, gated_chunked, gated_loop, gated_matrix, gated_ref
from .delta import bi_delta_chunked, bi_delta_matrix, bi_delta_ref, delta_chunked, delta_loop, delta_matrix, delta_ref
from .boundary import EnteringStates, SegmentSummary, entering_state_readout, entering_states, segment_summary

__all__ = [
    "semiseparable_matrix",
    "semiseparable_ref",
    "semiseparable_loop",
    "semiseparable_chunked",
    "quasiseparable_matrix",
    "quasiseparable_ref",
    "quasiseparable_chunked",
    "quasiseparable_two_pass",
    "quasiseparable_minimal",
    "toeplitz_fft", "toeplitz_ref", "toeplitz_matrix",
    "low_rank_mix", "low_rank_ref", "low_rank_matrix",
    "vandermonde_mix", "vandermonde_ref", "vandermonde_matrix",
    "dft_cos_mix", "dft_cos_ref", "dft_cos_matrix",
    "cauchy_mix", "cauchy_ref", "cauchy_matrix",
    "gated_chunked", "gated_ref", "gated_loop", "gated_matrix", "bi_gated_chunked", "bi_gated_ref", "bi_gated_matrix",
    "delta_chunked", "delta_ref", "delta_loop", "delta_matrix", "bi_delta_chunked", "bi_delta_ref", "bi_delta_matrix",
    "SegmentSummary", "EnteringStates", "segment_summary", "entering_states", "entering_state_readout",
]
