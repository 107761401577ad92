"""Ray beyond one process: a real two-node cluster on this machine (RAY_ADDRESS), a node lost while trials run,
GPU scheduling on logical GPUs, and a worker killed for memory by Ray's own monitor.

The grid's drivers run as subprocesses, as a user's would; the cluster is ray.cluster_utils.Cluster, whose
shutdown stops only the processes it started. Token authentication is set explicitly (RAY_AUTH_MODE=token,
the token in ~/.ray/auth_token, shared by both nodes on one machine).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.engine.synthetic import write_synthetic
from bench.experiment.fingerprint import fingerprint
from bench.experiment.identity import trial_id
from bench.experiment.presets import load_preset
from bench.grid import MAX_NODE_FAILURES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SLEEPY = {"doc": "trials that sleep", "fixed": {"budget_samples": 64, "checkpoints": 1, "threads": 1},
          "axes": {"dataset": ["mnist"], "loss": ["batch-all"], "margin": [0.2], "batch_size": [8], "seed": []}}


def sleepy_trial(config: dict, report) -> dict:
    """Logs {"event", "seed", "time", "node", "pid", "gpu_ids", "device"} to data_dir/trials.log around a sleep
    of data_dir/SLEEP seconds (default 3); with data_dir/BARRIER = n, first waits (up to 60 s) until n trials
    have started."""
    import ray

    data_dir = Path(config["data_dir"])
    seconds = float((data_dir / "SLEEP").read_text()) if (data_dir / "SLEEP").exists() else 3.0

    def log(event: str) -> None:
        line = {"event": event, "seed": config["seed"], "time": time.time(),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "gpu_ids": ray.get_gpu_ids(), "device": config["device"]}
        with open(data_dir / "trials.log", "a") as file:
            file.write(json.dumps(line) + "\n")

    log("start")
    if (data_dir / "BARRIER").exists():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(
                e["event"] == "start" for e in events(data_dir)) < int((data_dir / "BARRIER").read_text()):
            time.sleep(0.1)
    time.sleep(seconds)
    metrics = {"knn_accuracy": 0.5 + config["seed"] / 100, "status": "ok"}
    report(metrics)
    log("end")
    return metrics


def events(data_dir: Path) -> list[dict]:
    """The lines of data_dir/trials.log."""
    path = data_dir / "trials.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def records(folder: Path) -> dict[str, dict]:
    """trial_id → record of an experiment folder."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))}


def snapshot(folder: Path) -> dict[Path, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every file in folder/records."""
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in (folder / "records").glob("*")}


def setup_sleepy(tmp_path: Path, seeds: int, seconds: float = 3.0) -> tuple[Path, Path]:
    """(preset path, data folder) for a grid of `seeds` sleepy trials."""
    preset = tmp_path / "sleepy.json"
    preset.write_text(json.dumps({**SLEEPY, "axes": {**SLEEPY["axes"], "seed": list(range(seeds))}}))
    data_dir = tmp_path / "data"
    write_synthetic(data_dir, "mnist", n_train=50, n_test=20)
    (data_dir / "SLEEP").write_text(str(seconds))
    return preset, data_dir


def env(**extra: str) -> dict[str, str]:
    """This environment with the tests importable by Ray's workers and token authentication set explicitly."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "RAY_AUTH_MODE": "token",
            **extra}


def drive(code: str, extra_env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a driver script (python -c code) in the repository root; return it finished."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def grid_code(preset: Path, data_dir: Path, results: Path, init: str = "", **options: object) -> str:
    """A driver that runs the sleepy grid with run_grid(**options) (after `init`) and exits with its code."""
    args = ", ".join(f"{key}={value!r}" for key, value in options.items())
    return (f"import sys, ray\nfrom bench.grid import run_grid\nfrom test_cluster import sleepy_trial\n{init}\n"
            f"sys.exit(run_grid({str(preset)!r}, {str(data_dir)!r}, {str(results)!r}, backend='ray', "
            f"trial_fn=sleepy_trial{', ' + args if args else ''}))")


CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id, "worker": worker.node_id}),
      flush=True)
for line in sys.stdin:
    cluster.remove_node(worker, allow_graceful=False)
    print("killed", flush=True)
cluster.shutdown()
"""


class TwoNodes:
    """A two-node Ray cluster on this machine, one CPU per node, token auth, run by a helper process (so that
    its processes get this environment, and only they are stopped): address, head and worker node ids."""

    def __init__(self) -> None:
        # its own Ray temp folder: Ray records the latest cluster's address there, and a plain ray.init()
        # elsewhere on this machine would otherwise connect to this cluster
        self.tmp = tempfile.mkdtemp(prefix="tb-ray-")
        self.env = {"RAY_TMPDIR": self.tmp}
        self.proc = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env(**self.env),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        info = json.loads(self.proc.stdout.readline())
        self.address, self.head, self.worker = info["address"], info["head"], info["worker"]

    def kill_worker(self) -> None:
        """Kill every process of the worker node at once (no graceful shutdown)."""
        self.proc.stdin.write("kill\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "killed\n"

    def stop(self) -> None:
        """Shut the cluster down."""
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def cluster():
    """A fresh TwoNodes, shut down after the test."""
    nodes = TwoNodes()
    try:
        yield nodes
    finally:
        nodes.stop()


def smoke_status_is_expected(record: dict) -> bool:
    """A smoke trial ends ok, except a CIFAR-10 cifar-net one: after 2 steps its BatchNorm running statistics are
    still nearly the fresh ones, which squeeze the eval-mode embeddings to a point, so it ends collapsed by size."""
    final = record["final"]
    if record["config"]["dataset"] == "cifar10":
        return record["status"] == "collapsed" and final["spread"] < 0.2 * final["initial_spread"]
    return record["status"] == "ok"


def test_the_smoke_grid_spreads_over_a_two_node_cluster(cluster: TwoNodes, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.grid", "--smoke", "--no-report", "--results", str(tmp_path)],
                          cwd=ROOT,
                          env=env(RAY_ADDRESS=cluster.address, **cluster.env), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Ray: connecting to the cluster at {cluster.address}" in proc.stdout
    found = {tid: record for tid, record in records(tmp_path / "smoke").items() if not tid.startswith("baseline-")}
    grid = load_preset("smoke")
    prints = json.loads((tmp_path / "smoke/grid.json").read_text())["data"]
    assert set(found) == {trial_id({**grid.config(p), "threads": 1}, prints[p["dataset"]]) for p in grid.points()}
    progress = sorted(line.split(" ", 1)[0] for line in proc.stdout.splitlines() if line.startswith("["))
    assert progress == sorted(f"[{n}/8]" for n in range(1, 9))  # each trial reported (and recorded) once
    nodes = {record["provenance"]["node"]["node_id"] for record in found.values()}
    assert nodes == {cluster.head, cluster.worker}
    assert all(record["provenance"]["concurrent_trials"] == 1 for record in found.values())
    assert all(smoke_status_is_expected(record) for record in found.values())
    for noise in ("Token authentication", "tensorboard", "Tuner.restore", "Failed to fetch metrics"):
        assert noise not in proc.stdout + proc.stderr


def test_a_lost_node_is_survived_and_nothing_recorded_is_rewritten(cluster: TwoNodes, tmp_path: Path) -> None:
    preset, data_dir = setup_sleepy(tmp_path, seeds=6, seconds=4)
    results = tmp_path / "results"
    driver = subprocess.Popen([sys.executable, "-c", grid_code(preset, data_dir, results)], cwd=ROOT,
                              env=env(RAY_ADDRESS=cluster.address, **cluster.env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine starts Ray slowly
    while not [e for e in events(data_dir) if e["event"] == "start" and e["node"] == cluster.worker and
               not any(f["event"] == "end" and f["pid"] == e["pid"] and f["seed"] == e["seed"]
                       for f in events(data_dir))]:
        assert time.monotonic() < deadline and driver.poll() is None, "no trial started on the worker node"
        time.sleep(0.2)
    before = snapshot(results / "sleepy")
    lost = [e["seed"] for e in events(data_dir) if e["node"] == cluster.worker][-1]
    killed = time.monotonic()
    cluster.kill_worker()
    out = driver.communicate(timeout=900)[0]
    first_run = time.monotonic() - killed
    if MAX_NODE_FAILURES:  # retried in the same run, on the head
        assert driver.returncode == 0, out
    else:  # reported; the same command finishes it
        assert driver.returncode == 1 and "re-run the same command" in out, out
        again = drive(grid_code(preset, data_dir, results), {"RAY_ADDRESS": cluster.address, **cluster.env})
        assert again.returncode == 0, again.stdout + again.stderr
    found = records(results / "sleepy")
    assert len(found) == 6 and all(record["status"] == "ok" for record in found.values())
    assert {path: snapshot(results / "sleepy")[path] for path in before} == before
    starts = [e for e in events(data_dir) if e["event"] == "start" and e["seed"] == lost]
    assert len(starts) == 2 and starts[-1]["node"] == cluster.head
    record = next(r for r in found.values() if r["config"]["seed"] == lost)
    assert record["provenance"]["node"]["node_id"] == cluster.head
    print(f"node lost: first run ended {first_run:.1f} s after the kill; output:\n{out}")


def test_gpu_shares_are_reserved_and_four_trials_run_at_once_on_two_logical_gpus(tmp_path: Path) -> None:
    preset, data_dir = setup_sleepy(tmp_path, seeds=8, seconds=0.5)
    (data_dir / "BARRIER").write_text("4")  # 4 trials could run at once: every trial waits for the 4th to start
    init = "ray.init(address='local', num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)"
    proc = drive(grid_code(preset, data_dir, tmp_path / "results", init, gpus_per_trial=0.5, device="cpu"), {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = records(tmp_path / "results/sleepy")
    assert len(found) == 8
    for record in found.values():
        assert record["provenance"]["resources"] == {"cpu": 1.0, "gpu": 0.5}
        assert record["provenance"]["concurrent_trials"] == 4 and record["config"]["device"] == "cpu"
        assert record["provenance"]["device"] == "cpu"
    log = events(data_dir)
    assert {e["device"] for e in log} == {"cpu"} and all(len(e["gpu_ids"]) == 1 for e in log)
    changes = sorted((e["time"], 1 if e["event"] == "start" else -1) for e in log)
    running = [sum(step for _, step in changes[: i + 1]) for i in range(len(changes))]
    assert max(running) == 4


def test_a_worker_killed_by_rays_memory_monitor_is_recorded_as_oom(tmp_path: Path) -> None:
    preset, data_dir = setup_sleepy(tmp_path, seeds=1, seconds=30)
    init = "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)"
    proc = drive(grid_code(preset, data_dir, tmp_path / "results", init),
                 {"RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = records(tmp_path / "results/sleepy").values()
    assert record["status"] == "OOM" and "memory" in record["reason"], record["reason"]
    assert record["history"] == [] and record["data"] == {"fingerprint": fingerprint("mnist", data_dir)}
    assert "grid sleepy: 1 trials: 1 OOM" in proc.stdout


def test_ctrl_c_under_ray_ends_with_the_projects_line_and_no_ray_advice(tmp_path: Path) -> None:
    preset, data_dir = setup_sleepy(tmp_path, seeds=4, seconds=8)
    init = "ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False)"
    driver = subprocess.Popen([sys.executable, "-c", grid_code(preset, data_dir, tmp_path / "results", init)],
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine starts Ray slowly
    while not any(e["event"] == "end" for e in events(data_dir)):
        assert time.monotonic() < deadline and driver.poll() is None, "no trial finished"
        time.sleep(0.2)
    time.sleep(1)
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 1, out + err
    assert "unfinished; re-run the same command to resume" in out
    assert "stopped or not started by Tune (interrupted)" in out and "failed in Ray" not in out, out
    for noise in ("Tuner.restore", "Resume experiment with", "Failed to fetch metrics", "tensorboard", "Token auth"):
        assert noise not in out + err, noise
    assert (tmp_path / "results/sleepy/ray/tuner.pkl").is_file()
