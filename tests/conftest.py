"""Shared fixtures: tiny generated datasets, so no test needs real MNIST or CIFAR-10; the fingerprint cache in a
temporary folder (for this process and every subprocess it starts), never the user's. Under pytest-xdist the tests
that start Ray run on one worker, one after the other, as in a serial run: two Ray instances never share the
machine, and the rest (test_grid.py's local-backend tests among them) runs beside them on the other worker."""

import os
import tempfile
from pathlib import Path

import pytest

from bench.engine.synthetic import write_synthetic
from bench.experiment.fingerprint import CACHE_ENV

os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tripletbench-cache-")
RAY_MODULES = ("test_grid.py", "test_cluster.py")  # the modules whose tests may start Ray


def starts_ray(item: pytest.Item) -> bool:
    """Whether a test of RAY_MODULES starts Ray: all of test_cluster.py; in test_grid.py, those that use the
    ray_session fixture or name Ray (a grid run as a subprocess with --backend ray, say)."""
    if item.path.name == "test_cluster.py":
        return True
    return item.path.name in RAY_MODULES and (
        "ray_session" in getattr(item, "fixturenames", ()) or "ray" in item.name.split("[")[0].split("_"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts Ray in the xdist group "ray" (`--dist loadgroup` keeps a group on one worker)."""
    for item in items:
        if starts_ray(item):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny generated mnist.npz and cifar10.npz (10 classes, 600 train / 200 test)."""
    data_dir = tmp_path_factory.mktemp("data")
    write_synthetic(data_dir, "mnist")
    write_synthetic(data_dir, "cifar10")
    return data_dir
