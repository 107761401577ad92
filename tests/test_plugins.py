"""Plugins (docs/own-loss.md): a user's loss and data set from one file join a trial, a grid and its report with no
edit to the project; a missing or failing plugin is refused in one line."""

import csv
import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.engine import plugins
from bench.engine.config import ConfigError, resolve
from bench.engine.data import load_dataset
from bench.engine.datasets import DATASETS
from bench.engine.synthetic import synthetic_split
from losses import LOSSES

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "own-loss.md").read_text()
# the doc's loss, as a user copies it, and a data set like the doc's, 16×16 grey as an image folder
PLUGIN = DOC.split("```python\n")[1].split("```")[0] + textwrap.dedent('''
    from bench.engine.datasets import DATASETS, Dataset
    DATASETS["tiny"] = Dataset((1, 16, 16), "mnist-net", augment=False, folder="tiny/")
''')


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin file; the registries it fills and the plugins imported are as before afterwards."""
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    monkeypatch.setattr(plugins, "LOADED", {})
    saved = dict(LOSSES), dict(DATASETS)
    yield path
    for registry, before in zip((LOSSES, DATASETS), saved, strict=True):
        registry.clear()
        registry.update(before)


def write_images(data_dir: Path) -> None:
    """The tiny set as an image folder: data_dir/tiny/{train,test}/<class>/<i>.png, 16×16 grey, 4 classes."""
    for split, n, seed in (("train", 160, 1), ("test", 80, 2)):
        images, labels = synthetic_split("mnist", n, n_classes=4, seed=seed)
        for i, (image, label) in enumerate(zip(images[:, :16, :16], labels, strict=True)):
            folder = data_dir / "tiny" / split / f"class-{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png")


def test_a_plugin_adds_a_loss_and_a_data_set(plugin: Path, tmp_path: Path) -> None:
    assert "contrastive" not in LOSSES and "tiny" not in DATASETS
    with pytest.raises(ConfigError, match="unknown loss 'contrastive'"):
        resolve({"loss": "contrastive"})
    cfg = resolve({"loss": "contrastive", "dataset": "tiny", "plugins": str(plugin)})
    assert cfg["loss"] == "contrastive" and str(plugin.resolve()) in plugins.LOADED
    embeddings = torch.randn(8, 4, requires_grad=True)
    LOSSES["contrastive"](embeddings, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 0.5).backward()
    assert embeddings.grad is not None
    write_images(tmp_path / "data")
    x_train, y_train, x_test, y_test = load_dataset("tiny", tmp_path / "data", "cpu")
    assert x_train.shape == (160, 1, 16, 16) and x_test.shape == (80, 1, 16, 16)
    assert sorted(y_train.unique().tolist()) == [0, 1, 2, 3]
    first = sorted((tmp_path / "data" / "tiny" / "train" / "class-0").glob("*"))[0]
    assert np.array_equal(x_train[y_train == 0][0, 0].numpy(), np.asarray(Image.open(first)))


def test_a_bad_plugin_is_one_line(plugin: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^plugin nothere.py: no such \.py file \(resolved: "):
        resolve({"plugins": "nothere.py"})
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError) as err:
        resolve({"plugins": str(tmp_path / "broken.py")})
    assert str(err.value) == f"plugin {tmp_path / 'broken.py'}: importing it raised RuntimeError: no GPU here"


def test_a_preset_with_a_plugin_runs_its_loss_and_data_through_the_grid_and_report(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "my_plugin.py").write_text(PLUGIN)
    preset = {"doc": "a plugin's loss and data set", "plugins": ["my_plugin.py"],
              "axes": {"dataset": ["tiny"], "loss": ["contrastive", "batch-all"], "margin": [0.2],
                       "batch_size": [16], "seed": [0, 1]},
              "fixed": {"budget_samples": 64, "checkpoints": 1, "eval_gallery": 60, "eval_queries": 30,
                        "embedding_dim": 8}}
    (tmp_path / "presets" / "mine.json").write_text(json.dumps(preset))
    write_images(tmp_path / "data")
    grid = subprocess.run([sys.executable, "-m", "bench.grid", "--preset", str(tmp_path / "presets" / "mine.json"),
                           "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "results"),
                           "--backend", "local"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert grid.returncode == 0, grid.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "mine" / "records").glob("*.json")]
    trials = [r for r in records if r.get("kind") != "baseline"]
    assert sorted(r["config"]["loss"] for r in trials) == ["batch-all", "batch-all", "contrastive", "contrastive"]
    digest = hashlib.sha256((tmp_path / "presets" / "my_plugin.py").read_bytes()).hexdigest()[:16]
    assert all(f"my_plugin.py sha256 {digest}" in r["provenance"]["plugins"] for r in trials)
    assert json.loads((tmp_path / "results" / "mine" / "grid.json").read_text())["plugins"] == [
        str((tmp_path / "presets" / "my_plugin.py").resolve())]
    with open(tmp_path / "results" / "mine" / "report" / "summary.csv", newline="") as handle:
        losses = {row["loss"] for row in csv.DictReader(handle)}
    assert {"contrastive", "batch-all", "pixels", "untrained"} <= losses


def test_a_plugins_loss_joins_the_loss_benchmark(plugin: Path) -> None:
    from bench.loss_benchmark import IMPLS, OURS, Point, impls, run_grid

    plugins.load([str(plugin)])
    built_in = sum(impl == OURS for impl, _ in IMPLS)
    assert impls()[built_in] == (OURS, "contrastive") and (OURS, "contrastive") not in IMPLS
    point = Point(OURS, "contrastive", 32, 4, 8, "cpu", 2, 60.0, 1024.0, plugins=str(plugin))
    (row,) = run_grid([point])
    assert row["status"] == "ok" and row["median_ms"] > 0, row
