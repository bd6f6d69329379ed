"""The validation mode: checks that read tensor values run on CPU tensors by default, on every
device under ``validation(True)``, nowhere under ``validation(False)``; on a GPU the default
forward and backward of a padded batch never wait for the device."""

import os
import subprocess
import sys

import pytest
import torch

import hydra_ssm
from hydra_ssm import Hydra, get_validation, set_validation, validation
from hydra_ssm._checks import _mode_from_environment, value_checks_enabled
from hydra_ssm.ops import quasiseparable_chunked

from helpers import hydra_inputs

TINY = dict(d_model=16, d_state=4, d_conv=3, headdim=8, expand=2, chunk_size=4)
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def tiny_layer(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return Hydra(**{**TINY, **kw}).to(dtype)


def with_nan(u):
    u = u.clone()
    u[0, 1, 2] = float("nan")
    return u


def scan_with_dt(dt_fwd):
    """quasiseparable_chunked of small random inputs with the given forward step sizes (1, 6, 2)."""
    x, _, dt_bwd, A, B_f, C_f, B_b, C_b, D = hydra_inputs(1, 6, 2, 3, 1, 4)
    return quasiseparable_chunked(x, dt_fwd, dt_bwd, A, B_f, C_f, B_b, C_b, D, chunk_size=4)


@pytest.fixture(autouse=True)
def default_mode():
    """Every test starts from the default mode and leaves it so."""
    previous = get_validation()
    set_validation(None)
    yield
    set_validation(previous)


def test_default_mode_checks_cpu_values():
    layer = tiny_layer()
    u = torch.randn(2, 5, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="u contains NaN or infinite values"):
        layer(with_nan(u))
    with pytest.raises(ValueError, match="dt_fwd must be >= 0"):
        scan_with_dt(-torch.rand(1, 6, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="attention_mask of dtype torch.int64 must contain only 0 and 1"):
        layer(u, attention_mask=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="one contiguous run of valid tokens"):
        layer(u, attention_mask=torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool))


def test_validation_false_skips_value_checks_on_cpu():
    layer = tiny_layer()
    u = torch.randn(2, 5, 16, dtype=torch.float64)
    with validation(False):
        out = layer(with_nan(u))  # propagates instead of raising
        y = scan_with_dt(-torch.rand(1, 6, 2, dtype=torch.float64))
    assert out[0].isnan().any() and out[1].isfinite().all()  # the other sequence is untouched
    assert y.shape == (1, 6, 2, 3)
    with pytest.raises(ValueError, match="u contains NaN"):  # the mode is back to the default
        layer(with_nan(u))


def test_validation_false_keeps_shape_checks():
    with validation(False), pytest.raises(ValueError, match=r"last dimension is 15, expected d_model=16"):
        tiny_layer()(torch.randn(2, 5, 15, dtype=torch.float64))


def test_predicate_follows_the_mode():
    meta, cpu = torch.empty(3, device="meta"), torch.empty(3)
    assert not value_checks_enabled(meta) and value_checks_enabled(cpu)
    with validation(True):
        assert value_checks_enabled(meta) and value_checks_enabled(cpu)
    with validation(False):
        assert not value_checks_enabled(meta) and not value_checks_enabled(cpu)
    assert not value_checks_enabled(meta) and value_checks_enabled(cpu)


def test_validation_restores_the_mode_after_an_exception():
    set_validation(False)
    with pytest.raises(RuntimeError, match="inside the block"):
        with validation(True):
            with validation(None):
                assert get_validation() is None
            assert get_validation() is True
            raise RuntimeError("inside the block")
    assert get_validation() is False
    assert hydra_ssm.get_validation is get_validation  # the switch is part of the package's API


@pytest.mark.parametrize("mode", [1, 0, "1", "on"])
def test_bad_mode_is_refused(mode):
    with pytest.raises(ValueError, match=r"validation mode must be None .* True .* or False .*, got"):
        set_validation(mode)
    with pytest.raises(ValueError, match=r"validation mode must be None"), validation(mode):
        pass
    assert get_validation() is None


@pytest.mark.parametrize("value, mode", [("", None), ("1", True), ("0", False), (" 1 ", True)])
def test_environment_values(monkeypatch, value, mode):
    monkeypatch.setenv("HYDRA_SSM_VALIDATE", value)
    assert _mode_from_environment() is mode


def test_bad_environment_value(monkeypatch):
    monkeypatch.setenv("HYDRA_SSM_VALIDATE", "yes")
    with pytest.raises(ValueError, match=r"HYDRA_SSM_VALIDATE must be 1 .* 0 .* or unset .*, got 'yes'"):
        _mode_from_environment()


def test_environment_sets_the_default_in_a_fresh_process():
    # the core alone (transformers blocked) keeps the two imports short
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import torch, hydra_ssm\n"
            "from hydra_ssm._checks import value_checks_enabled\n"
            "print(hydra_ssm.get_validation(), value_checks_enabled(torch.empty(1)), "
            "value_checks_enabled(torch.empty(1, device='meta')))")
    runs = {}
    for value in ("1", "0"):
        env = {**os.environ, "HYDRA_SSM_VALIDATE": value, "PYTHONPATH": SRC}
        runs[value] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    out = {value: run.communicate(timeout=300) for value, run in runs.items()}
    assert runs["1"].returncode == 0 and runs["0"].returncode == 0, out
    assert out["1"][0].split() == ["True", "True", "True"]
    assert out["0"][0].split() == ["False", "False", "False"]


def tiny_model(**kw):
    pytest.importorskip("transformers")
    from hydra_ssm.models import HydraConfig, HydraModel

    config = HydraConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, d_state=4, headdim=8, chunk_size=4,
                         max_position_embeddings=8, matrix_mixer_type="hydra", hidden_dropout_prob=0.0, **kw)
    torch.manual_seed(0)
    return HydraModel(config).eval()


def test_model_value_checks_follow_the_mode():
    model, ids = tiny_model(), torch.randint(1, 20, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 20\)"):
        model(ids + 20)
    with pytest.raises(ValueError, match="must contain only 0 and 1"):
        model(ids, attention_mask=2 * mask)
    with validation(False):  # not looked at: any nonzero counts as a valid token
        assert model(ids, attention_mask=2 * mask).last_hidden_state.isfinite().all()


def test_model_position_range_is_a_shape_check_without_a_mask():
    model = tiny_model(use_position_embeddings=True)
    with validation(False), pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(torch.randint(1, 20, (1, 9)))


def test_model_keeps_an_unread_mask():
    from hydra_ssm.models.modeling_hydra import _padding_mask

    ones = torch.ones(2, 5, dtype=torch.bool)
    assert _padding_mask(ones) is None  # a CPU mask is read: all ones is no mask
    meta = ones.to("meta")
    assert _padding_mask(meta) is meta  # elsewhere kept unread (the mixers give the same outputs)
    model, ids = tiny_model(), torch.randint(1, 20, (2, 6))
    assert torch.equal(model(ids).last_hidden_state,
                       model(ids, attention_mask=torch.ones(2, 6, dtype=torch.long)).last_hidden_state)


# ------------------------------------------------------------------ CUDA: no host synchronisation
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def padded_batch(d_model, dtype, device, length=37):
    """(3, length, d_model) inputs and a bool mask with right padding, left padding and none."""
    u = torch.randn(3, length, d_model, dtype=dtype, device=device, requires_grad=True)
    mask = torch.ones(3, length, dtype=torch.bool, device=device)
    mask[0, length - 9:] = False
    mask[1, :5] = False
    return u, mask


def no_sync(step):
    """Run ``step()`` with every host synchronisation an error, then wait for the device."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return result


def cuda_hydra(scan_impl, dtype):
    """A Hydra layer of d_model 64 on the GPU; skips the test when this scan_impl is not accepted."""
    torch.manual_seed(0)
    try:
        return Hydra(d_model=64, d_state=16, headdim=16, scan_impl=scan_impl, device="cuda", dtype=dtype)
    except ValueError as err:  # a scan_impl this version does not have ("triton", "auto")
        pytest.skip(f"scan_impl={scan_impl!r} is not available: {err}")


# The torch scan reads its largest log-decay to choose float32 or float64 (a precision choice, not a check):
# in float64 it has no choice to make, so its forward and backward must then be free of synchronisations.
@cuda
@pytest.mark.parametrize("scan_impl, dtype", [("fused", torch.float64), ("two_pass", torch.float64),
                                              ("triton", torch.float32), ("auto", torch.float32)])
def test_cuda_padded_batch_forward_backward_does_not_sync(scan_impl, dtype):
    layer = cuda_hydra(scan_impl, dtype)
    u, mask = padded_batch(64, dtype, "cuda")

    def step():
        out = layer(u, attention_mask=mask)
        out.square().sum().backward()
        return out

    out = no_sync(step)
    assert out.isfinite().all() and (out[~mask] == 0).all()
    assert u.grad is not None and u.grad.isfinite().all()
    assert all(p.grad is not None for p in layer.parameters())


@cuda
def test_cuda_value_checks_are_opt_in():
    layer = cuda_hydra("fused", torch.float64)
    u = torch.randn(2, 9, 64, dtype=torch.float64, device="cuda")
    out = layer(with_nan(u))  # default: not looked for on the GPU, it propagates
    assert out[0].isnan().any()
    with validation(True), pytest.raises(ValueError, match="u contains NaN or infinite values"):
        layer(with_nan(u))
    hole = torch.tensor([[1, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9], dtype=torch.bool, device="cuda")
    with validation(True), pytest.raises(ValueError, match="one contiguous run of valid tokens"):
        layer(u, attention_mask=hole)


@cuda
def test_cuda_model_padded_batch_does_not_sync():
    pytest.importorskip("transformers")
    from hydra_ssm.models import HydraConfig, HydraForMaskedLM

    config = HydraConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, intermediate_size=64,
                         max_position_embeddings=64, matrix_mixer_type="hydra", hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    model = HydraForMaskedLM(config).to(device="cuda", dtype=torch.float64)
    ids = torch.randint(1, 50, (3, 37), device="cuda")
    _, mask = padded_batch(64, torch.float64, "cuda")
    labels = torch.where(mask, ids, -100)

    def step():
        out = model(input_ids=ids, attention_mask=mask.long(), labels=labels)
        out.loss.backward()
        return out

    out = no_sync(step)
    assert out.loss.isfinite() and out.logits.isfinite().all()
