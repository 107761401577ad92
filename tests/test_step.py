"""The shared training step: one update at the given lr with the loss in fp32, and the one that both the trial and
the step benchmark run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.engine.step
import bench.engine.train
from bench.engine.step import batch_input, train_step
from bench.engine.train import run_trial
from bench.step_benchmark import load_data, make_point, make_step
from losses import LOSSES


def test_train_step_is_one_update_at_the_given_lr_with_the_loss_in_fp32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    reference = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    x, labels = torch.randn(8, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    embeddings, loss = train_step(model, optimizer, LOSSES["batch-all"], x, labels, 0.2, "bf16", 1e-3)
    assert embeddings.dtype == torch.float32 and not loss.requires_grad
    assert optimizer.param_groups[0]["lr"] == 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_embeddings = reference(x)
    expected = LOSSES["batch-all"](expected_embeddings.float(), labels, 0.2)
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-6)
    by_hand = torch.optim.Adam(reference.parameters(), lr=1e-3)
    expected.backward()
    by_hand.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_non_finite_embedding_makes_the_steps_loss_non_finite(name: str) -> None:
    """The trial's divergence check reads the step's loss: a net that outputs NaN must show there, whatever the loss
    makes of it (semi-hard, for one, gives a finite value: it sums only the terms it chooses)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, labels = torch.randn(8, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    x[2] = float("nan")
    _, loss = train_step(model, torch.optim.SGD(model.parameters()), LOSSES[name], x, labels, 0.2, "fp32", 1e-3)
    assert not torch.isfinite(loss)
    if name == "semi-hard":
        embeddings = torch.randn(8, 4)
        embeddings[2] = float("nan")
        assert torch.isfinite(LOSSES[name](embeddings, labels, 0.2, check_finite=False))  # what the step must catch


def test_batch_input_is_normalised_channels_last_and_augments_only_when_asked() -> None:
    x_train = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    batch, mean, std = torch.tensor([3, 1, 4]), torch.full((3,), 0.4), torch.full((3,), 0.2)
    plain = batch_input(x_train, batch, mean, std, torch.Generator().manual_seed(0), False)
    assert plain.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, (x_train[batch].float() / 255 - 0.4) / 0.2)
    augmented = batch_input(x_train, batch, mean, std, torch.Generator().manual_seed(0), True)
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)


def test_the_trial_and_the_step_benchmark_run_the_same_step(tiny_data_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(name: str) -> Any:
        def step(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return bench.engine.step.train_step(*args, **kwargs)
        return step

    monkeypatch.setattr("bench.engine.train.train_step", spy("trial"))
    monkeypatch.setattr("bench.step_benchmark.train_step", spy("benchmark"))
    run_trial({"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32, "budget_samples": 64,
               "data_dir": str(tiny_data_dir), "device": "cpu", "eval_gallery": 100, "eval_queries": 50,
               "checkpoints": 1, "precision": "fp32"})
    point = make_point({"dataset": "mnist", "loss": "batch-all", "margin": 0.2, "batch_size": 32}, "fp32")
    step, _ = make_step(point.cfg, load_data("mnist", tiny_data_dir, torch.device("cpu")), torch.device("cpu"),
                        "fp32")
    step(0)
    assert calls == ["trial", "trial", "benchmark"]
