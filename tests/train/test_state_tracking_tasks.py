"""The state-tracking tasks (parity, S5) and --mixer-option: labels against brute force, seeds, errors."""

import functools
import itertools
import json

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from hydra_ssm.cli import main  # noqa: E402
from hydra_ssm.train.config import TrainConfig, UsageError, build_config, mixer_options  # noqa: E402
from hydra_ssm.train.synthetic import (PARITY_ANSWERS, PARITY_WORDS, S5_WORDS, parity_examples, s5_compose_table, s5_examples,  # noqa: E402
                                       synthetic_data)
from hydra_ssm.train.tokenization import CLS, SEP, SPECIALS  # noqa: E402

QUIET = ["--threads", "1", "--progress", "false", "--plot", "false"]


def word(token_id: int) -> str:
    return (SPECIALS + S5_WORDS)[token_id]


def perm(name: str) -> tuple:
    """"p10234" -> (1, 0, 2, 3, 4): i maps to the i-th digit."""
    return tuple(int(c) for c in name[1:])


def after(a: tuple, b: tuple) -> tuple:
    """a ∘ b: apply b, then a."""
    return tuple(a[b[i]] for i in range(5))


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_parity_label_at_every_bit_is_the_parity_of_its_prefix_and_of_its_suffix(length):
    x, y = parity_examples(40, length, seed=3)
    assert x.shape == y.shape == (40, length + 2)
    assert (x[:, 0] == CLS).all() and (x[:, -1] == SEP).all() and (y[:, [0, -1]] == -100).all()
    zero, one = len(SPECIALS), len(SPECIALS) + 1
    vocab = SPECIALS + PARITY_WORDS + PARITY_ANSWERS
    for row, labels in zip(x.tolist(), y.tolist()):
        bits = [b - zero for b in row[1:-1]]
        assert set(row[1:-1]) <= {zero, one}
        for i in range(length):
            xor = lambda part: functools.reduce(lambda a, b: a ^ b, part)  # noqa: E731
            assert vocab[labels[1 + i]] == f"{xor(bits[: i + 1])}{xor(bits[i:])}"
    assert len(set(y[:, 1:-1].flatten().tolist())) == (2 if length == 1 else 4)  # every answer occurs


# ------------------------------------------------------------------------------------------ S5
def test_s5_vocabulary_is_the_120_permutations_identity_first():
    assert len(S5_WORDS) == len(set(S5_WORDS)) == 120
    assert S5_WORDS[0] == "p01234"
    assert {perm(w) for w in S5_WORDS} == set(itertools.permutations(range(5)))


def test_s5_table_composes_right_to_left():
    T = s5_compose_table()
    for a, b in itertools.product(range(0, 120, 7), range(0, 120, 11)):
        assert perm(S5_WORDS[T[a, b]]) == after(perm(S5_WORDS[a]), perm(S5_WORDS[b]))


def test_s5_product_order_on_a_non_commuting_pair():
    """g1 = p12034 (0->1->2->0), g2 = p10234 (swap 0, 1): the word g1 g2 is g1 ∘ g2 = p21034,
    not g2 ∘ g1 = p02134."""
    T = s5_compose_table()
    g1, g2 = S5_WORDS.index("p12034"), S5_WORDS.index("p10234")
    assert S5_WORDS[T[g1, g2]] == "p21034" and S5_WORDS[T[g2, g1]] == "p02134"


@pytest.mark.parametrize("length", [1, 2, 5, 40])
def test_s5_label_is_the_prefix_product_at_odd_and_the_suffix_product_at_even_positions(length):
    x, y = s5_examples(25, length, seed=7)
    assert x.shape == y.shape == (25, length + 2)
    assert (x[:, 0] == CLS).all() and (x[:, -1] == SEP).all() and (y[:, [0, -1]] == -100).all()
    for row, labels in zip(x.tolist(), y.tolist()):
        word_perms = [perm(word(t)) for t in row[1:-1]]
        for i in range(length):  # i = 0 is position 1 (odd)
            part = word_perms[: i + 1] if i % 2 == 0 else word_perms[i:]
            product = functools.reduce(after, part)
            assert labels[1 + i] == len(SPECIALS) + S5_WORDS.index("p" + "".join(map(str, product)))


# ------------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("task", ["parity", "s5"])
def test_generated_data_are_deterministic_and_train_differs_from_validation(task):
    cfg = TrainConfig(task="synthetic", synthetic_task=task, state_len=12, synthetic_train_size=64,
                      synthetic_val_size=64).validate()
    a, b = synthetic_data(cfg), synthetic_data(cfg.replace(seed=5))  # the training seed does not change the data
    for split in ("train", "val"):
        for k in ("input_ids", "labels"):
            assert torch.equal(getattr(a, split)[k], getattr(b, split)[k])
    assert not torch.equal(a.train["input_ids"], a.val["input_ids"])
    assert a.kind == "lm" and a.seq_len == 14 and a.vocab_size == len(SPECIALS) + (6 if task == "parity" else 120)
    assert a.tokenizer.encode(" ".join(["1", "0"] if task == "parity" else S5_WORDS[:2])).ids[0] == CLS


# ------------------------------------------------------------------------------------------ options
def test_mixer_option_values_are_literals_else_strings():
    got = mixer_options(["allow_neg_eigval=True", "num_householder=2", "transition=complex", "dt_limit=(0.0, 1.0)",
                         "x= 'a b' "])
    assert got == {"allow_neg_eigval": True, "num_householder": 2, "transition": "complex", "dt_limit": [0.0, 1.0],
                   "x": "a b"}
    assert mixer_options({"scan_impl": "two_pass"}) == {"scan_impl": "two_pass"}


@pytest.mark.parametrize("overrides, message", [
    ({"state_len": 0}, "--state-len must be positive, got 0"),
    ({"mixer_options": ["scan_impl"]}, "--mixer-option: expected KEY=VALUE"),
    ({"mixer_options": ["=3"]}, "--mixer-option: expected KEY=VALUE"),
    ({"mixer_options": ["scan_impl=a", "scan_impl=b"]}, "scan_impl is given twice"),
    ({"mixer_options": ["scan_imp=two_pass"]}, "did you mean 'scan_impl'?"),
    ({"mixer_options": ["is_dft=True"]}, "--mixer-option is_dft: no mixer of --mixers (hydra, mha) accepts it"),
    ({"mixer_options": ["x={1, 2}"]}, "--mixer-option x: {1, 2} is not a plain value"),
])
def test_bad_state_len_and_mixer_options_are_usage_errors(overrides, message):
    with pytest.raises(UsageError) as err:
        build_config({}, {"task": "synthetic", "synthetic_task": "parity", **overrides})
    assert message in str(err.value)


def test_an_option_one_listed_mixer_accepts_is_valid():
    cfg = build_config({}, {"mixers": "hydra,vandermonde", "mixer_options": ["is_dft=True"]})
    assert cfg.mixer_options == {"is_dft": True}


def test_state_tracking_tasks_are_token_level_for_context_parallelism():
    for task in ("parity", "s5"):
        cfg = build_config({}, {"task": "synthetic", "synthetic_task": task, "mixers": "hydra", "context_parallel": 2})
        assert cfg.context_parallel == 2
    with pytest.raises(UsageError, match="classifies whole sequences"):
        build_config({}, {"task": "synthetic", "synthetic_task": "listops", "mixers": "hydra", "context_parallel": 2})


def test_bad_mixer_option_value_stops_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "synthetic", "--synthetic-task", "s5", "--state-len", "4", "--mixers", "hydra",
            "--mixer-option", "scan_impl=sideways", "--output-dir", str(out), *QUIET]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hydra-ssm: error:") and "scan_impl" in err[0] and "sideways" in err[0]
    assert not (out / "synthetic-s5" / "hydra" / "checkpoints").exists()


def test_evaluate_refuses_mixer_option(capsys):
    assert main(["evaluate", "--model", "nowhere", "--mixer-option", "scan_impl=fused"]) == 2
    assert "evaluate does not take --mixer-option" in capsys.readouterr().err


def test_each_mixer_gets_the_options_it_accepts_from_cli_and_config_file(tmp_path):
    """--mixer-option scan_impl reaches hydra and not mha; a config file's mapping does the same."""
    (tmp_path / "c.yaml").write_text("mixer_options:\n  scan_impl: minimal\n")
    for i, options in enumerate((["--mixer-option", "scan_impl=two_pass"], ["--config", str(tmp_path / "c.yaml")])):
        out = tmp_path / f"run{i}"
        assert main(["train", "--task", "synthetic", "--synthetic-task", "parity", "--state-len", "4",
                     "--synthetic-train-size", "32", "--synthetic-val-size", "8", "--mixers", "hydra,mha", "--steps",
                     "1", "--batch-size", "4", "--hidden-size", "16", "--num-layers", "1", "--d-state", "4",
                     "--headdim", "8", "--num-heads", "2", "--output-dir", str(out), *options, *QUIET]) == 0
        want = "two_pass" if i == 0 else "minimal"
        hydra = json.loads((out / "synthetic-parity" / "hydra" / "model" / "config.json").read_text())
        mha = json.loads((out / "synthetic-parity" / "mha" / "model" / "config.json").read_text())
        assert hydra["mixer_options"] == {"scan_impl": want} and mha["mixer_options"] == {}
        saved = json.loads((out / "synthetic-parity" / "hydra" / "train_config.json").read_text())
        assert saved["mixer_options"] == {"scan_impl": want}
