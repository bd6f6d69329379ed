"""A user adds a mixer the way docs/mixers.md shows, trains nothing, saves a model with it and loads it back.

The "Adding a mixer" code block of docs/mixers.md is run as written, each time in a fresh interpreter
(registration is global, so nothing here registers a mixer inside the test process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def add_mixer_block() -> str:
    """The first python block under the "Adding a mixer" heading of docs/mixers.md."""
    text = (ROOT / "docs" / "mixers.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding a mixer"):]
    return re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)


def run_python(code: str, *args, cwd) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"--- code ---\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    return r


def test_docs_add_mixer_block_runs_and_its_model_loads_in_a_fresh_process(tmp_path):
    block = add_mixer_block()
    # the block as written, then a model that uses the mixer
    save = block + textwrap.dedent("""
        import sys
        from hydra_ssm.models import HydraConfig, HydraModel

        torch.manual_seed(0)
        cfg = HydraConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, headdim=8, max_position_embeddings=12,
                          matrix_mixer_type="decay", mixer_options={"init": 0.7})
        model = HydraModel(cfg).eval()
        ids = torch.randint(1, 32, (2, 12))
        model.save_pretrained(sys.argv[1])
        torch.save({"ids": ids, "out": model(ids).last_hidden_state.detach()}, sys.argv[1] + "/expected.pt")

        # training reads the class's position_aware: a position-aware mixer gets no position embeddings by default
        from types import SimpleNamespace
        from hydra_ssm.train.config import TrainConfig
        from hydra_ssm.train.loop import model_config

        task = SimpleNamespace(vocab_size=32, seq_len=12, kind="mlm", num_labels=0, info={})
        train_cfg = TrainConfig(hidden_size=16, headdim=8, num_heads=4)
        assert model_config(train_cfg, task, "decay", 0).use_position_embeddings is False
    """)
    load = textwrap.dedent("""
        import sys
        import torch
        import hydra_ssm  # registers the Auto classes, not the custom mixer
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(sys.argv[1])  # loads although "decay" is not registered
        assert cfg.matrix_mixer_type == "decay" and cfg.mixer_options == {"init": 0.7}, cfg
        try:
            AutoModel.from_pretrained(sys.argv[1])
        except ValueError as err:
            assert "unknown mixer 'decay'" in str(err), err
        else:
            raise AssertionError("a model was built for a mixer that is not registered")
        exec(sys.argv[2])  # the docs' block registers it
        model, info = AutoModel.from_pretrained(sys.argv[1], output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        expected = torch.load(sys.argv[1] + "/expected.pt")
        out = model.eval()(expected["ids"]).last_hidden_state
        assert torch.equal(out, expected["out"]), (out - expected["out"]).abs().max()
        assert model.encoder.layers[0].mixer.init == 0.7
    """)
    run_python(save, tmp_path / "model", cwd=tmp_path)
    run_python(load, tmp_path / "model", block, cwd=tmp_path)


def test_a_mixer_taking_kwargs_builds_in_a_model(tmp_path):
    """A mixer whose constructor takes ``**kwargs`` receives the config's mixer fields and checks them itself;
    the config does not judge them for it (e.g. hidden_size against the attention heads of "mha"). Its class
    attributes keep their documented defaults."""
    code = textwrap.dedent("""
        import torch
        from hydra_ssm.mixers import SequenceMixer, register_mixer
        from hydra_ssm.models import HydraConfig, HydraModel


        @register_mixer("scale")
        class ScaleMixer(SequenceMixer):
            def __init__(self, d_model, **kwargs):
                super().__init__()
                self.kwargs = kwargs
                self.w = torch.nn.Parameter(torch.ones(d_model))

            def forward(self, u, attention_mask=None):
                return u * self.w


        # hidden_size 20 is not divisible by the default num_attention_heads (12): irrelevant to this mixer
        model = HydraModel(HydraConfig(vocab_size=32, hidden_size=20, num_hidden_layers=1, matrix_mixer_type="scale"))
        mixer = model.encoder.layers[0].mixer
        assert mixer.kwargs["num_heads"] == 12 and mixer.kwargs["d_state"] == 64, mixer.kwargs
        assert model(torch.randint(1, 32, (2, 5))).last_hidden_state.shape == (2, 5, 20)

        # position_aware left at its default (False): training adds position embeddings
        from types import SimpleNamespace
        from hydra_ssm.train.config import TrainConfig
        from hydra_ssm.train.loop import model_config

        task = SimpleNamespace(vocab_size=32, seq_len=12, kind="mlm", num_labels=0, info={})
        assert model_config(TrainConfig(hidden_size=20), task, "scale", 0).use_position_embeddings is True
    """)
    run_python(code, cwd=tmp_path)
