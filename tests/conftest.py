"""Shared fixtures: tiny generated datasets, so no test needs real MNIST or CIFAR-10; the fingerprint cache in a
temporary folder (for this process and every subprocess it starts), never the user's. Under pytest-xdist the modules
that start Ray (RAY_MODULES) run on one worker, one after the other, as in a serial run: two Ray instances never
share the machine, and the rest runs beside them on the other worker."""

import os
import tempfile
from pathlib import Path

import pytest

from bench.engine.synthetic import write_synthetic
from bench.experiment.fingerprint import CACHE_ENV

os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tripletbench-cache-")
RAY_MODULES = ("test_grid.py", "test_cluster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of RAY_MODULES in the xdist group "ray" (`--dist loadgroup` keeps a group on one worker)."""
    for item in items:
        if item.path.name in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny generated mnist.npz and cifar10.npz (10 classes, 600 train / 200 test)."""
    data_dir = tmp_path_factory.mktemp("data")
    write_synthetic(data_dir, "mnist")
    write_synthetic(data_dir, "cifar10")
    return data_dir
