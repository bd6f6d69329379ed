"""The ``dft_matrix`` state_dict entry of the DFT Vandermonde mixer, kept out of memory."""

from __future__ import annotations

import torch
from torch import nn

from ...ops.vandermonde import dft_cos_matrix

class DFTHolder(nn.Module):
    """Holds the state_dict entry ``dft_matrix`` (max_seq_len x max_seq_len cosines)
    without keeping it in memory: saved on demand, checked and dropped on load.

    Two loaders reach it: ``nn.Module.load_state_dict`` (through
    ``_load_from_state_dict``) and transformers' ``from_pretrained``, which
    reads ``holder.dft_matrix`` for its shape and then assigns the loaded
    tensor to it; both check the tensor against the DFT and keep nothing.
    """

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def _mismatch(self, key: str, value: torch.Tensor) -> str | None:
        """Why ``value`` cannot stand for the DFT entry ``key``, or None when it is that DFT."""
        if tuple(value.shape) != (self.n, self.n):
            return f"size mismatch for {key}: expected {(self.n, self.n)}, got {tuple(value.shape)}"
        if value.device.type == "meta":
            return None
        # this layer always applies the exact DFT: a stored matrix that is not that DFT would be silently replaced
        err, tol = float("inf"), 0.0
        if value.is_floating_point():
            expected = dft_cos_matrix(self.n, self.n, value.device, torch.float64)
            err = float((value.detach().to(torch.float64) - expected).abs().max())
            tol = max(1e-3, 4 * torch.finfo(value.dtype).eps)  # rounding of a saved low-precision copy
        if err <= tol:
            return None
        return (f"{key} differs from the cosine DFT of size {self.n} (max abs difference {err:.3g}): the "
                "vandermonde mixer with is_dft=True always applies the exact DFT, so this state_dict "
                "holds a different matrix (a corrupted file, or a layer trained with a learned matrix)")

    def __getattr__(self, name):
        if name == "dft_matrix":  # shape only, for loaders that compare shapes before assigning
            return torch.empty(self.n, self.n, device="meta")
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "dft_matrix":  # a loader assigning the stored entry: check it, keep nothing
            problem = self._mismatch(name, value)
            if problem:
                raise ValueError(problem)
            return
        super().__setattr__(name, value)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "dft_matrix"] = dft_cos_matrix(self.n, self.n)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "dft_matrix"
        if key in state_dict:
            problem = self._mismatch(key, state_dict.pop(key))
            if problem:
                error_msgs.append(problem)
        elif strict:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
