"""The embedding nets: shapes, the model key, an fp32 head under bf16 autocast, and torchvision imported only for a
ResNet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.engine.train
from bench.engine.config import ConfigError, resolve
from bench.engine.models import MODELS, build_model, forward_flops, model_settings
from bench.engine.train import run_trial

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_every_model_embeds_every_dataset_into_unit_rows(model: str, dataset: str) -> None:
    torch.manual_seed(0)
    net = build_model(model, SHAPES[dataset], 16, normalize=True).eval()
    out = net(torch.randn(3, *SHAPES[dataset]))
    assert out.shape == (3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("model", MODELS)
def test_under_bf16_autocast_the_head_and_normalisation_run_in_fp32(model: str) -> None:
    """The output is float32 and equals the head applied in fp32 to the bf16 backbone's features."""
    torch.manual_seed(0)
    net = build_model(model, SHAPES["cifar10"], 16, normalize=True).eval()
    x = torch.randn(4, *SHAPES["cifar10"])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out = net(x)
        features = net.backbone(x)
    assert features.dtype == torch.bfloat16  # the backbone did run in bf16
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(features.float() @ net.head.weight.T + net.head.bias, dim=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # a bf16 head would round the embeddings to 8 bits of mantissa: the fp32 ones are not on that grid
    assert not torch.equal(out, out.bfloat16().float())


def test_unnormalised_output_is_the_plain_head() -> None:
    torch.manual_seed(0)
    net = build_model("cifar-net", SHAPES["cifar10"], 8, normalize=False).eval()
    x = torch.randn(2, *SHAPES["cifar10"])
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.head(net.backbone(x)))


def test_model_settings_resolve_the_dataset_default_and_the_models_defaults() -> None:
    assert model_settings(resolve({"dataset": "mnist"}))["model"] == "mnist-net"
    assert model_settings(resolve({"dataset": "cifar10"}))["model"] == "resnet18"
    cifar_net = model_settings(resolve({"dataset": "cifar10", "model": "cifar-net"}))
    assert cifar_net == {"model": "cifar-net", "embedding_dim": 128, "optimizer": "adam", "lr": 1e-3}
    assert model_settings(resolve({"dataset": "cifar10", "model": "cifar-net", "lr": 0.01}))["lr"] == 0.01


def test_bad_models_and_sizes_fail_with_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        build_model("vgg", SHAPES["cifar10"], 8, normalize=True)
    with pytest.raises(ConfigError, match="at least 8×8"):
        build_model("cifar-net", (3, 6, 6), 8, normalize=True)


def test_cifar_net_size_is_as_documented() -> None:
    """The parameter count that bench/engine/models.py's docstring states."""
    net = build_model("cifar-net", SHAPES["cifar10"], 128, normalize=True)
    assert sum(p.numel() for p in net.parameters()) == CIFAR_NET_PARAMETERS


CIFAR_NET_PARAMETERS = 310_328


def test_forward_flops_counts_twice_the_multiply_adds_of_conv_and_linear_layers() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5))
    per_output_pixel = 6 * (4 // 2) * 3 * 3  # each output channel sees in_channels / groups inputs × 3 × 3
    assert forward_flops(net, (4, 8, 8)) == 2 * (per_output_pixel * 8 * 8 + 5 * 96)
    assert net.training  # left as it was
    assert forward_flops(build_model("cifar-net", SHAPES["cifar10"], 128, normalize=True), SHAPES["cifar10"]) \
        == 39_804_992  # the 40 MFLOPs in bench/engine/models.py's table


def test_torchvision_is_imported_only_for_a_resnet_and_before_the_memory_baseline(
    tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry points start without torchvision (about 2 s of CPU each); a resnet18 trial imports it before
    TrainingPeak takes its baseline, so that its module code never counts as training memory."""
    code = ("import sys, bench.grid, bench.trial, bench.report, bench.step_benchmark, bench.gpu_check\n"
            "from bench.engine.models import import_model_code\n"
            "before = 'torchvision' in sys.modules\nimport_model_code('cifar-net')\n"
            "between = 'torchvision' in sys.modules\nimport_model_code('resnet18')\n"
            "print(before, between, 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False", "True"], done.stderr[-2000:]

    class Baseline(Exception):
        """Stops the trial at its memory baseline."""

    order: list[str] = []

    def baseline(device: torch.device) -> None:
        order.append("baseline")
        raise Baseline

    monkeypatch.setattr(bench.engine.train, "import_model_code", lambda model: order.append(f"import {model}"))
    monkeypatch.setattr(bench.engine.train, "TrainingPeak", baseline)
    config = {"dataset": "cifar10", "model": "resnet18", "loss": "batch-all", "margin": 0.2, "batch_size": 16,
              "budget_samples": 32, "data_dir": str(tiny_data_dir), "device": "cpu", "precision": "fp32"}
    with pytest.raises(Baseline):
        run_trial(config)
    assert order == ["import resnet18", "baseline"]
