"""HydraModel.stream_hidden_states (one long sequence, segment by segment, in place) equals the model's forward."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from hydra_ssm.models import HydraConfig, HydraForMaskedLM, HydraModel  # noqa: E402


def model(seed=0, **overrides):
    """A tiny float64 encoder in eval mode; a large init so that every block changes the hidden states a lot."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, d_state=4, headdim=8, chunk_size=4, d_conv=3,
                  max_position_embeddings=64, initializer_range=0.3)
    fields.update(overrides)
    return HydraModel(HydraConfig(**fields)).double().eval()


def ids_and_types(batch, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (batch, length), generator=gen), torch.randint(0, 2, (batch, length), generator=gen)


@settings(deadline=None, max_examples=30)
@given(prenorm=st.booleans(), positions=st.booleans(), mlp=st.sampled_from([0, 24]), d_conv=st.sampled_from([1, 3, 7]),
       length=st.integers(1, 40), segment_len=st.integers(1, 45), batch=st.integers(1, 2))
def test_stream_equals_forward(prenorm, positions, mlp, d_conv, length, segment_len, batch):
    m = model(is_prenorm=prenorm, use_position_embeddings=positions, intermediate_size=mlp, d_conv=d_conv)
    ids, types = ids_and_types(batch, length)
    with torch.no_grad():
        want = m(ids, token_type_ids=types).last_hidden_state
    got = m.stream_hidden_states(ids, segment_len, token_type_ids=types)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.stream_mean_embedding(ids, segment_len, token_type_ids=types), want.mean(1),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("segment_len", [1, 2, 5, 37, 50])
def test_stream_equals_forward_at_every_segment_length(prenorm, segment_len):
    """Segments shorter than the conv's halo (1, 2), not dividing L (5), equal to L and longer than L."""
    m = model(is_prenorm=prenorm, use_position_embeddings=True, intermediate_size=24, d_conv=7)
    ids, types = ids_and_types(2, 37, seed=1)
    with torch.no_grad():
        want = m(ids, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(m.stream_hidden_states(ids, segment_len, token_type_ids=types), want,
                               rtol=1e-10, atol=1e-12)


def test_out_is_a_memory_mapped_file(tmp_path):
    m = model(is_prenorm=True, use_position_embeddings=True, intermediate_size=24)
    ids, types = ids_and_types(2, 50, seed=2)
    path = tmp_path / "hidden.bin"
    out = torch.from_file(str(path), shared=True, size=2 * 50 * 16, dtype=torch.float64).view(2, 50, 16)
    out.fill_(float("nan"))
    assert m.stream_hidden_states(ids.to(torch.int16), 7, token_type_ids=types, out=out) is out
    with torch.no_grad():
        want = m(ids, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    del out
    on_disk = torch.from_file(str(path), shared=False, size=2 * 50 * 16, dtype=torch.float64).view(2, 50, 16)
    torch.testing.assert_close(on_disk, want, rtol=1e-10, atol=1e-12)


def test_masked_lm_streams_its_encoder():
    torch.manual_seed(0)
    mlm = HydraForMaskedLM(HydraConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, d_state=4, headdim=8,
                                       chunk_size=4, initializer_range=0.3)).double().eval()
    ids, types = ids_and_types(1, 25)
    with torch.no_grad():
        want = mlm.hydra(ids, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(mlm.stream_hidden_states(ids, 4, token_type_ids=types), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mlm.stream_mean_embedding(ids, 4, token_type_ids=types), want.mean(1),
                               rtol=1e-10, atol=1e-12)


def test_empty_batch():
    m = model()
    assert m.stream_hidden_states(torch.zeros(0, 9, dtype=torch.long), 4).shape == (0, 9, 16)
    assert m.stream_mean_embedding(torch.zeros(0, 9, dtype=torch.long), 4).shape == (0, 16)


def test_bad_arguments_are_refused_before_any_computation():
    m = model(use_position_embeddings=True)
    ids, _ = ids_and_types(1, 12)
    out = torch.full((1, 12, 16), float("nan"), dtype=torch.float64)
    cases = [
        (dict(segment_len=0), "segment_len"),
        (dict(segment_len=2.5), "segment_len"),
        (dict(input_ids=ids.double()), "input_ids must be an integer tensor"),
        (dict(input_ids=ids + 40), r"input_ids must be in \[0, 40\)"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long), out=None), "at least one position"),
        (dict(input_ids=torch.zeros(1, 65, dtype=torch.long), out=None), "max_position_embeddings=64"),
        (dict(token_type_ids=torch.full((1, 12), 2)), "token_type_ids"),
        (dict(out=torch.empty(1, 11, 16, dtype=torch.float64)), r"out must be a tensor of shape \(1, 12, 16\)"),
        (dict(out=out.float()), "the model's dtype torch.float64"),
        (dict(out=out.numpy()), "out must be a tensor"),
    ]
    for change, message in cases:
        args = dict(input_ids=ids, segment_len=4, out=out)
        args.update(change)
        with pytest.raises(ValueError, match=message):
            m.stream_hidden_states(args.pop("input_ids"), args.pop("segment_len"), **args)
        assert out.isnan().all()


def test_only_streaming_mixers_and_eval_mode():
    attention = model(matrix_mixer_type="mha", num_attention_heads=2)
    with pytest.raises(ValueError, match=r"mixer of block 0 is 'mha' \(MultiHeadAttention\)"):
        attention.stream_hidden_states(torch.zeros(1, 5, dtype=torch.long), 2)
    training = model().train()
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        training.stream_hidden_states(torch.zeros(1, 5, dtype=torch.long), 2)
