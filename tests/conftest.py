"""Shared fixtures: tiny generated datasets, so no test needs real MNIST or CIFAR-10; the fingerprint cache in a
temporary folder (for this process and every subprocess it starts), never the user's."""

import os
import tempfile
from pathlib import Path

import pytest

from bench.engine.synthetic import write_synthetic
from bench.experiment.fingerprint import CACHE_ENV

os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tripletbench-cache-")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny generated mnist.npz and cifar10.npz (10 classes, 600 train / 200 test)."""
    data_dir = tmp_path_factory.mktemp("data")
    write_synthetic(data_dir, "mnist")
    write_synthetic(data_dir, "cifar10")
    return data_dir
