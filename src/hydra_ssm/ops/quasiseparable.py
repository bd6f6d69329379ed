"""Chunked Hydra (placeholder: delegates to the reference until the kernel lands)."""
from .reference import quasiseparable_ref


def quasiseparable_chunked(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D=None, chunk_size=64, initial_states=None):
    return quasiseparable_ref(x, dt_fwd, dt_bwd, A, B_fwd, C_fwd, B_bwd, C_bwd, D, initial_states)


quasiseparable_two_pass = quasiseparable_chunked
