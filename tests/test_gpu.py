"""The GPU path (`pytest -m cuda`, run by `make gpu-check`): skipped, with its reason, on machines without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.engine.data import channel_stats, load_dataset
from bench.engine.models import build_model
from bench.engine.train import embed, run_trial
from losses import LOSSES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check runs these)"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_on_cuda_equal_the_cpu_values_and_gradients(name: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(96, 16, generator=gen, dtype=dtype), dim=1)
    labels = torch.randint(0, 6, (96,), generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        x = embeddings.to(device).requires_grad_()
        loss = LOSSES[name](x, labels.to(device), 0.2)
        loss.backward()
        results.append((loss.detach().cpu(), x.grad.cpu()))
    (cpu_value, cpu_grad), (cuda_value, cuda_grad) = results
    tolerance = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(cuda_value, cpu_value, **tolerance)
    torch.testing.assert_close(cuda_grad, cpu_grad, **tolerance)


def test_a_cuda_trial_runs_and_reports_its_peak_memory(tiny_data_dir: Path) -> None:
    reports: list[dict] = []
    final = run_trial({"dataset": "cifar10", "model": "cifar-net", "loss": "batch-all", "margin": 0.2,
                       "batch_size": 32, "budget_samples": 256, "checkpoints": 2, "data_dir": str(tiny_data_dir),
                       "device": "cuda", "eval_gallery": 300, "eval_queries": 100}, reports.append)
    assert len(reports) == 2 and final["status"] == "ok"
    assert final["samples_per_second"] > 0
    # the split alone (600 + 200 uint8 images of 3×32×32) is 2.3 MiB on the device; the net and Adam add more
    assert 2 < final["peak_memory_mib"] < torch.cuda.get_device_properties(0).total_memory / 2**20


@pytest.mark.parametrize("model", ["mnist-net", "resnet18", "cifar-net"])
def test_bf16_evaluation_keeps_fp32_embeddings(model: str, tiny_data_dir: Path) -> None:
    """embed() runs the backbone in bf16 on CUDA, but the head and normalisation in fp32."""
    device = torch.device("cuda")
    x_train, _, _, _ = load_dataset("cifar10", tiny_data_dir, device)
    mean, std = channel_stats(x_train)
    torch.manual_seed(0)
    net = build_model(model, tuple(x_train.shape[1:]), 16, normalize=True).to(device)
    net = net.to(memory_format=torch.channels_last)
    embeddings = embed(net, x_train[:64], mean, std)
    assert embeddings.dtype == torch.float32
    assert not torch.equal(embeddings, embeddings.bfloat16().float())  # not quantised to bf16
    net.eval()
    with torch.inference_mode():
        x = ((x_train[:64].float() / 255 - mean[:, None, None]) / std[:, None, None])
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", torch.bfloat16):
            features = net.backbone(x)
        expected = torch.nn.functional.normalize(net.head(features.float()), dim=1)
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-4)
