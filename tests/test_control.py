"""The normalised-softmax control: exact against a loop over the formula, its config rules, its parameters trained
with the net, a trial and a grid with it beside the triplet losses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.engine.config import CONTROL_TEMPERATURE, ConfigError, resolve
from bench.engine.diagnostics import checkpoint_diagnostics, initial_statistics, is_pinned
from bench.engine.step import train_step, training_loss
from bench.engine.synthetic import write_synthetic
from bench.engine.train import run_trial
from bench.experiment.gridspec import variant
from bench.experiment.identity import trial_id
from losses import CONTROLS, LOSSES, NormalizedSoftmax, facts


def by_loop(embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i −log(exp(cos(e_i, w_{y_i}) / τ) / Σ_c exp(cos(e_i, w_c) / τ)), one term at a time."""
    terms = []
    for e, y in zip(embeddings, labels, strict=True):
        logits = [torch.dot(e, w) / (e.norm() * w.norm()) / temperature for w in weight]
        terms.append(-(logits[int(y)] - torch.logsumexp(torch.stack(logits), dim=0)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_the_control_is_exact_against_the_formula_in_value_and_gradient(seed: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(seed)
    classes, dim, b = 5, 7, 12
    head = NormalizedSoftmax(classes, dim, temperature, g).double()
    embeddings = torch.randn(b, dim, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, classes, (b,), generator=g)
    ours = head(embeddings, labels)
    ours.backward()
    weight = head.weight.detach().clone().requires_grad_(True)
    loop_embeddings = embeddings.detach().clone().requires_grad_(True)
    theirs = by_loop(loop_embeddings, labels, weight, temperature)
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(embeddings.grad, loop_embeddings.grad)
    torch.testing.assert_close(head.weight.grad, weight.grad)


def test_the_control_ignores_the_embeddings_scale_and_checks_its_labels() -> None:
    g = torch.Generator().manual_seed(0)
    head = NormalizedSoftmax(4, 6, 0.1, g)
    embeddings, labels = torch.randn(8, 6, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.testing.assert_close(head(embeddings * 37.0, labels), head(embeddings, labels))
    with torch.no_grad():  # cosines: a translation changes the loss
        assert float(head(embeddings, labels)) != pytest.approx(float(head(embeddings + 1.0, labels)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got 0 to 4"):
        head(embeddings, torch.tensor([0, 0, 1, 1, 2, 2, 3, 4]))
    with pytest.raises(ValueError, match="temperature > 0"):
        NormalizedSoftmax(4, 6, 0.0)
    assert torch.isnan(head(embeddings.index_fill(0, torch.tensor([2]), math.nan), labels, check_finite=False))


def test_a_control_has_no_margin_and_only_a_control_has_a_temperature() -> None:
    base = {"dataset": "mnist", "loss": "normalized-softmax", "margin": 0.0}
    assert resolve(base)["temperature"] == CONTROL_TEMPERATURE
    assert resolve({**base, "temperature": 0.1})["temperature"] == 0.1
    with pytest.raises(ConfigError, match="margin must be 0 for normalized-softmax"):
        resolve({**base, "margin": 0.2})
    with pytest.raises(ConfigError, match="temperature must be > 0, got -0.1"):
        resolve({**base, "temperature": -0.1})
    with pytest.raises(ConfigError, match="temperature is a control's setting .* batch-all has none"):
        resolve({"loss": "batch-all", "temperature": 0.05})
    # a triplet loss's trial keeps the id it had before the temperature key existed
    triplet = {"dataset": "cifar10", "loss": "batch-all", "margin": 0.2}
    assert trial_id(triplet, "f") == trial_id({**triplet, "temperature": None}, "f")
    assert trial_id(base, "f") != trial_id({**base, "temperature": 0.1}, "f")
    assert trial_id(base, "f") == trial_id({**base, "temperature": CONTROL_TEMPERATURE}, "f")


def test_the_control_s_proxies_train_with_the_net_from_the_seed() -> None:
    cfg = resolve({"dataset": "mnist", "loss": "normalized-softmax", "margin": 0.0, "model": "mnist-net",
                   "embedding_dim": 6, "seed": 3})
    loss_fn, parameters = training_loss(cfg, 4, torch.device("cpu"))
    again = training_loss(cfg, 4, torch.device("cpu"))[1]
    other_seed = training_loss({**cfg, "seed": 4}, 4, torch.device("cpu"))[1]
    assert [tuple(p.shape) for p in parameters] == [(4, 6)]
    torch.testing.assert_close(parameters[0], again[0])
    assert not torch.equal(parameters[0], other_seed[0])
    assert training_loss(resolve({"loss": "batch-all"}), 4, torch.device("cpu")) == (LOSSES["batch-all"], [])

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6))
    before = parameters[0].detach().clone()
    optimizer = torch.optim.Adam([*model.parameters(), *parameters], lr=1e-2)
    x, labels = torch.randn(8, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    _, loss = train_step(model, optimizer, loss_fn, x, labels, 0.0, "fp32", 1e-2)
    assert math.isfinite(float(loss)) and not torch.equal(parameters[0].detach(), before)


def test_the_diagnostics_that_read_a_margin_do_not_apply_to_the_control() -> None:
    g = torch.Generator().manual_seed(0)
    embeddings, labels = torch.randn(16, 4, generator=g), torch.arange(4).repeat_interleave(4)
    initial = initial_statistics([(embeddings, labels)], "normalized-softmax", 0.0)
    assert initial["initial_active_anchors"] is None and initial["effective_margin"] == 0.0
    assert initial["initial_fraction_easy"] + initial["initial_fraction_hard"] == pytest.approx(1.0)
    assert not is_pinned("normalized-softmax", 0.0, 0.0, -1.0)  # a loss of 0 at margin 0 is not "pinned"
    out = checkpoint_diagnostics("normalized-softmax", 0.0, 0.0, {"mu_pos": 0.1, "mu_neg": 0.2}, 0.9, 4, embeddings,
                                 1.0)
    assert out["pinned_at_margin"] is False and out["collapsed"] is False


def test_a_trial_with_the_control_learns_on_the_tiny_data(tiny_data_dir: Path) -> None:
    config = {"dataset": "mnist", "loss": "normalized-softmax", "margin": 0.0, "batch_size": 32,
              "budget_samples": 640, "checkpoints": 2, "data_dir": str(tiny_data_dir), "device": "cpu",
              "eval_gallery": 300, "eval_queries": 100, "precision": "fp32", "lr": 3e-3}
    reports: list[dict[str, Any]] = []
    final = run_trial(config, reports.append)
    assert final["status"] in ("ok", "collapsed") and math.isfinite(final["map_at_r"])
    assert reports[-1]["loss"] < reports[0]["loss"]  # the proxies and the net learn: the mean loss falls
    assert final["pinned_at_margin"] is False and final["initial_active_anchors"] is None


def fake_trial(config: dict[str, Any], report: Any) -> dict[str, Any]:
    """A trial that logs its (loss, temperature, seed) and reports a MAP@R that rises with the temperature."""
    from bench.engine.config import METRICS

    with open(Path(config["data_dir"]) / "calls.log", "a") as log:
        log.write(json.dumps([config["loss"], config.get("temperature"), config["seed"]]) + "\n")
    quality = 0.3 + (config.get("temperature") or 0.0) + config["seed"] / 1000
    metrics = {**dict.fromkeys(METRICS, 0.5), "checkpoint": 1, "step": 1, "status": "ok", "threads": 1,
               "initial_fraction_easy": 0.5, "initial_fraction_semihard": 0.25, "initial_fraction_hard": 0.25,
               "initial_active_anchors": None, "effective_margin": 0.0,
               "val_map_at_r": quality, "map_at_r": quality, "knn_accuracy": quality}
    report(metrics)
    Path(config["save_embeddings"]).write_bytes(b"npz")
    return metrics


def test_the_control_joins_a_recorded_grid_on_its_own_temperature_axis(tmp_path: Path) -> None:
    """A grid of a triplet loss, then the same grid with the control added (a temperature axis, None for the
    triplet loss): the recorded trials are kept and not rerun, the control's temperatures are cells of their own,
    and its selected cell runs on the fresh seeds."""
    import pandas as pd

    from bench.grid import run_grid

    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    triplet = {"axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8],
                        "seed": [0, 1]},
               "fixed": {"budget_samples": 16, "checkpoints": 1, "threads": 1}}
    preset = tmp_path / "fake.json"
    preset.write_text(json.dumps(triplet))
    results, report = tmp_path / "results", tmp_path / "report"
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial, reports=None) == 0
    before = {p.name: p.read_bytes() for p in (results / "fake" / "records").iterdir()}
    grown = {**triplet, "axes": {**triplet["axes"], "loss": ["batch-all", "normalized-softmax"],
                                 "temperature": [None]},
             "blocks": [{"loss": ["batch-all"]},
                        {"loss": ["normalized-softmax"], "margin": [0.0], "temperature": [0.05, 0.1]}],
             "fresh_seeds": [7]}
    preset.write_text(json.dumps(grown))
    assert run_grid(str(preset), data_dir, results, backend="local", trial_fn=fake_trial, reports=str(report)) == 0
    ran = [json.loads(line) for line in (data_dir / "calls.log").read_text().splitlines()]
    assert ran[2:] == [["normalized-softmax", t, s] for t in (0.05, 0.1) for s in (0, 1)] + [
        ["batch-all", None, 7], ["normalized-softmax", 0.1, 7]]
    assert {name: (results / "fake" / "records" / name).read_bytes() for name in before} == before
    summary = pd.read_csv(report / "summary.csv", keep_default_na=False)
    cells = summary[summary.experiment == "fake"]
    assert sorted(cells[cells.loss == "normalized-softmax"].variant) == ["temperature 0.05", "temperature 0.1"]
    assert list(cells[cells.loss == "batch-all"].variant) == [""]
    assert variant({"loss": "batch-all", "temperature": None}, ["lr", "temperature"]) == "lr default"


def test_every_control_is_a_module_built_from_classes_dim_temperature_and_a_generator() -> None:
    for name, cls in CONTROLS.items():
        assert name not in LOSSES
        head = cls(3, 5, 0.1, torch.Generator().manual_seed(0))
        assert isinstance(head, torch.nn.Module) and sum(p.numel() for p in head.parameters()) == 15
        known = facts(name)  # what diagnostics and config checks read
        assert not known.has_margin and not known.hardest and known.min_classes == 1
        assert known.effective_margin(0.0, 0.1, 0.9) == 0.0 and not known.can_pin(-1.0, 0.0)
        with pytest.raises(TypeError, match="parameters of its own"):
            known(torch.zeros(2, 3), torch.tensor([0, 1]), 0.0)
    assert facts("batch-all") is LOSSES["batch-all"]
