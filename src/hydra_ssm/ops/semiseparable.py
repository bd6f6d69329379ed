"""Chunked causal SSD (placeholder: delegates to the reference until the kernel lands)."""
from .reference import semiseparable_ref


def semiseparable_chunked(x, dt, A, B, C, chunk_size=64, initial_states=None, return_final_states=False):
    return semiseparable_ref(x, dt, A, B, C, initial_states, return_final_states)
