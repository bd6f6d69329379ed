"""Journey: ``hydra-ssm plot`` on what training wrote: |M| of a saved model's layers, a run's learning curves."""

import json
import shutil

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from hydra_ssm.cli import main  # noqa: E402
from tiny_runs import tiny_mlm_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_mlm_run(tmp_path_factory.mktemp("plot"), 15_000, "--mixers", "hydra,mha", "--steps", "4",
                        "--eval-every", "2", "--eval-batches", "1", "--num-layers", "2")


def png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mixer", ["hydra", "mha"])
def test_plot_model_draws_every_layer(run, tmp_path, mixer, capsys):
    capsys.readouterr()
    assert main(["plot", "--model", str(run / "mlm" / mixer / "model"), "--text", "def f(x): return x",
                 "--out", str(tmp_path)]) == 0
    path = tmp_path / "model_mixers.png"
    assert capsys.readouterr().out.split() == [str(path)]
    assert png(path) and path.stat().st_size > 5_000

    from hydra_ssm.plot import model_matrices
    name, rows = model_matrices(str(run / "mlm" / mixer / "model"), "def f(x): return x")
    assert name == mixer and [label for label, _ in rows] == ["layer 0", "layer 1"]
    length = rows[0][1].shape[-1]
    assert all(M.shape[-2:] == (length, length) and bool((M >= 0).all()) for _, M in rows)


def test_plot_run_draws_the_learning_curves(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "all")]) == 0
    assert png(tmp_path / "all" / "curves.png") and (tmp_path / "all" / "curves.png").stat().st_size > 10_000
    moved = tmp_path / "moved"  # a run directory moved elsewhere still finds its metrics
    shutil.copytree(run, moved)
    for path in [moved / "results.json", *moved.glob("mlm/*/result.json")]:
        data = json.loads(path.read_text())
        for r in data.get("results", [data]):
            r["run_dir"] = str(tmp_path / "gone" / r["mixer"])
        path.write_text(json.dumps(data))
    assert main(["plot", "--run", str(moved), "--out", str(tmp_path / "moved-all")]) == 0
    assert main(["plot", "--run", str(moved / "mlm" / "hydra"), "--out", str(tmp_path / "one")]) == 0
    assert png(tmp_path / "moved-all" / "curves.png") and png(tmp_path / "one" / "curves.png")


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plot", "--run", str(tmp_path), "--out", str(tmp_path)])
    assert e.value.code == 2 and "no results.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plot", "--model", str(tmp_path), "--out", str(tmp_path)])
    assert e.value.code == 2 and "not a model directory" in capsys.readouterr().err
