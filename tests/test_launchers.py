"""Hydra launchers for real: joblib processes and a local Ray cluster (2 workers) run 4-job multiruns
on a tiny model; every job's results are collected, every job logs to one W&B group, and each job's
metrics equal the same job run by the basic launcher. SLURM: composition only (no cluster here).
Bad inputs: a launcher that is not installed, a Ray address that does not answer, no sbatch.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from interpsuite.config import compose, conf_dir
from interpsuite.errors import ConfigError
from interpsuite.launchers import (
    EXTRAS,
    LAUNCHER_EXTRAS,
    check_ray_address,
    default_group,
    fixed_overrides,
    ray_connect_timeout,
    ray_host_port,
    requested_launcher,
)
from interpsuite.results import read_results
from interpsuite.sweep_summary import summarize_sweep
from tests.server_support import free_port

#: 4 cheap jobs: activation stats of a tiny Llama, one per seed (the seed sets its weights)
JOB = ["model=tiny_llama", "+analyzers.activation_stats={}", "data.limit=4", "progress=false", "wandb.mode=disabled"]
SEEDS = "seed=0,1,2,3"
METRIC = "resid_post.L01.mean_norm"


def _cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "interpsuite", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _jobs(proc: subprocess.CompletedProcess, key: str) -> dict[int, tuple[str, int]]:
    """The driver's one line per job: number -> (`key=value` among its overrides, exit code)."""
    found = re.findall(r"^job (\d+) \((.*)\): exit code (\d+)$", proc.stdout, flags=re.M)
    return {
        int(n): ([o for o in overrides.split(",") if o.startswith(f"{key}=")][0], int(code))
        for n, overrides, code in found
    }


def _job_results(sweep: Path) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[0]): read_results(p.parent) for p in sweep.glob("*/results.json")}


def _metrics(payload: dict) -> dict[str, float]:
    return payload["analyzers"]["activation_stats"]["metrics"]


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    """The 4 jobs run one after another in one process (Hydra's basic launcher): the reference."""
    root = tmp_path_factory.mktemp("basic")
    proc = _cli(["-m", *JOB, SEEDS, f"hydra.sweep.dir={root / 'sweep'}"], root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


def _check_sweep(proc, sweep: Path, basic_sweep: Path) -> None:
    """All 4 jobs ran, exit 0, one W&B group, metrics equal the basic launcher's, summary collects them."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _jobs(proc, "seed") == {n: (f"seed={n}", 0) for n in range(4)}, proc.stdout
    results, reference = _job_results(sweep), _job_results(basic_sweep)
    assert sorted(results) == [0, 1, 2, 3]
    group = default_group("default", sweep)
    for n, payload in results.items():
        assert payload["status"] == "complete"
        assert payload["analyzers"]["activation_stats"]["status"] == "ok"
        assert payload["sinks"]["wandb"] == {
            "status": "ok",
            "error": None,
            "mode": "disabled",
            "group": group,
            "run_id": None,
        }
        assert _metrics(payload) == _metrics(reference[n])  # the launcher changes where, not what
    assert _metrics(results[0]) != _metrics(results[1])  # the seed does set the weights
    summary = summarize_sweep(sweep)
    assert [(j.job, j.status, j.params["seed"]) for j in summary.jobs] == [(n, "complete", n) for n in range(4)]
    assert summary.swept == {"seed": [0, 1, 2, 3]}
    assert [j.metrics[f"activation_stats/{METRIC}"] for j in summary.jobs] == [
        _metrics(results[n])[METRIC] for n in range(4)
    ]
    assert {j.wandb_group for j in summary.jobs} == {group}
    assert all((summary.out_dir / f"sweep_summary.{ext}").is_file() for ext in ("csv", "json", "png", "pdf"))


# --- joblib ---------------------------------------------------------------------------------------
def test_joblib_multirun_of_4_jobs_collected(tmp_path, basic_sweep):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *JOB, SEEDS, f"hydra.sweep.dir={sweep}"]
    proc = _cli(args, tmp_path)
    _check_sweep(proc, sweep, basic_sweep)


def test_joblib_multirun_exits_with_the_worst_job_code(tmp_path):
    """Jobs in other processes still report their exit codes (the launcher's JobReturns)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *JOB,
        "batch_size=4,abc",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _jobs(proc, "batch_size") == {0: ("batch_size=4", 0), 1: ("batch_size=abc", 2)}, proc.stdout
    assert "interpsuite: error: batch_size: expected an integer, got 'abc'" in proc.stderr
    summary = summarize_sweep(sweep)
    assert [(j.job, j.status) for j in summary.jobs] == [(0, "complete"), (1, "missing")]
    assert "no results.json" in summary.jobs[1].error


def test_a_worker_that_dies_is_exit_1_not_a_config_error(tmp_path):
    """A joblib worker killed mid-job (os._exit in a Hydra callback) breaks the launch itself:
    Hydra exits 1 for it exactly as for a refused config, and the driver must still say 1."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *JOB,
        SEEDS,
        "+hydra.callbacks.die._target_=launcher_crash.DieInJob",
        "+hydra.callbacks.die.job=1",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = _cli(args, tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "interpsuite: error: the launcher failed while jobs ran (TerminatedWorkerError" in proc.stderr
    assert "jobs that finished keep their results.json" in proc.stderr


# --- Ray -------------------------------------------------------------------------------------------
#: Ray 2.5x turns token authentication on for a cluster it starts when a token exists: the test
#: cluster always uses its own token (nothing read from or written to ~/.ray)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_head():
    """A real local Ray head with 2 CPUs (2 jobs at a time), stopped in teardown whatever happens.

    It runs as `ray start --head --block` in its own process group, so teardown ends exactly the
    processes this test started (never `ray stop`, which stops every Ray on the machine)."""
    pytest.importorskip("ray")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port)]
    command += ["--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--temp-dir", temp_dir]
    env = {**os.environ, **RAY_ENV, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not started.wait(180) or proc.poll() is not None:
            raise RuntimeError("ray start --head did not start:\n" + "".join(lines[-40:]))
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to `ray start` (it stops its GCS, raylet and workers), then SIGKILL to whatever is
    left of its process group; returns when the group is gone."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(120):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    proc.wait(30)


def test_ray_multirun_of_4_jobs_on_a_local_cluster(tmp_path, basic_sweep, ray_head):
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_head}", *JOB, SEEDS]
    proc = _cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path, env=RAY_ENV)
    _check_sweep(proc, sweep, basic_sweep)


def test_a_ray_cluster_that_wants_a_token_is_one_error(tmp_path, ray_head):
    """Ray sends its token to an explicit address only with RAY_AUTH_MODE=token; without it,
    ray.init would retry for a minute and end in a traceback."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_head}", *JOB, SEEDS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(
        [sys.executable, "-m", "interpsuite", *args, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    expected = f"interpsuite: error: the Ray cluster at {ray_head} requires token authentication: set RAY_AUTH_MODE"
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and not sweep.exists()


def test_a_ray_address_that_does_not_answer_is_one_error(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    sweep = tmp_path / "sweep"
    proc = _cli(
        [
            "-m",
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address={address}",
            *JOB,
            SEEDS,
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert proc.returncode == 2
    assert f"interpsuite: error: Ray address {address} does not answer (Connection refused)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sweep.exists()  # refused before any job


def test_the_ray_probe_is_bounded():
    """A port that accepts connections but never answers (here: a socket nobody reads) is refused
    after the timeout; the multirun never hangs on it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConfigError, match=rf"Ray address {address} does not answer \(no answer within 0.5 s\)"):
            check_ray_address(address, timeout_s=0.5)


def test_the_probe_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("INTERPSUITE_RAY_CONNECT_TIMEOUT_S", "2.5")
    assert ray_connect_timeout() == 2.5
    monkeypatch.setenv("INTERPSUITE_RAY_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="INTERPSUITE_RAY_CONNECT_TIMEOUT_S='soon': expected a number of seconds > 0"):
        ray_connect_timeout()


def test_ray_addresses_parse_with_default_ports():
    assert ray_host_port("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert ray_host_port("head-node") == ("head-node", 6379)
    assert ray_host_port("ray://head-node") == ("head-node", 10001)
    assert ray_host_port("ray://head-node:10002/") == ("head-node", 10002)
    assert ray_host_port("[::1]:6379") == ("::1", 6379)
    with pytest.raises(ConfigError, match="port 'abc' is not a number"):
        ray_host_port("head:abc")


# --- configuration -----------------------------------------------------------------------------------
def test_every_preset_composes_with_its_plugin():
    presets = sorted(p.stem for p in (conf_dir() / "hydra" / "launcher").glob("*.yaml"))
    assert presets == ["ray_cluster", "ray_local", "slurm", "slurm_gpu"]
    targets = {
        "ray": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
        "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    }
    for name in presets:
        pytest.importorskip(EXTRAS[LAUNCHER_EXTRAS[name]].modules[0])
        cfg = compose([f"hydra/launcher={name}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_ == targets[LAUNCHER_EXTRAS[name]], name
        assert cfg.hydra.runtime.choices["hydra/launcher"] == name


def test_ray_presets_values():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    local = compose(["hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2"], return_hydra_config=True)
    assert dict(local.hydra.launcher.ray.init) == {"address": None, "num_cpus": 2, "include_dashboard": False}
    assert dict(local.hydra.launcher.ray.remote) == {"num_cpus": 1}
    cluster = compose(["hydra/launcher=ray_cluster"], return_hydra_config=True)
    assert dict(cluster.hydra.launcher.ray.init) == {"address": "auto", "object_store_memory": None}


def test_slurm_launcher_composes_with_our_presets_and_values():
    """SLURM is tested for composition only: the plugin's config, our defaults, the user's values."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    plain = compose(["hydra/launcher=submitit_slurm"], return_hydra_config=True).hydra.launcher
    assert (plain.timeout_min, plain.cpus_per_task, plain.mem_gb) == (60, None, None)  # the plugin's own defaults
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.timeout_min=240"]
    cfg = compose(overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb, launcher.gpus_per_node) == (240, 4, 16, 0)
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node, launcher.array_parallelism) == (
        "cpu",
        1,
        1,
        64,
    )
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # submitit's logs beside the jobs
    gpu = compose(["hydra/launcher=slurm_gpu", "+experiment=quickstart", "device=cuda"], return_hydra_config=True)
    assert (gpu.hydra.launcher.gpus_per_node, gpu.hydra.launcher.cpus_per_task, gpu.hydra.launcher.mem_gb) == (1, 8, 32)
    assert gpu.hydra.launcher.timeout_min == 120 and gpu.device == "cuda" and "activation_stats" in gpu.analyzers


def test_launcher_overrides_are_read_from_the_command_line():
    assert requested_launcher(["+experiment=quickstart", "hydra/launcher=ray", "seed=0,1"]) == "ray"
    assert requested_launcher(["hydra/launcher=joblib", "hydra/launcher=slurm"]) == "slurm"
    assert requested_launcher(["seed=0,1"]) is None
    kept = fixed_overrides(["-m", "hydra/launcher=ray", "seed=0,1", "model=tiny_llama", "batch_size=range(1,3)"])
    assert kept == ["hydra/launcher=ray", "model=tiny_llama"]


# --- launchers that are not installed ------------------------------------------------------------
BLOCKER = """
import sys


class Block:
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block(sys.argv[1].split(",")))
from interpsuite.__main__ import run_cli

sys.exit(run_cli(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "launcher, hidden, extra",
    [
        ("submitit_slurm", "submitit", "slurm"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
        ("ray", "hydra_plugins.hydra_ray_launcher", "ray"),
        ("ray_local", "ray", "ray"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher", "joblib"),
    ],
)
def test_a_launcher_that_is_not_installed_names_the_extra(tmp_path, launcher, hidden, extra):
    script = tmp_path / "hidden.py"
    script.write_text(BLOCKER)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            hidden,
            "-m",
            f"hydra/launcher={launcher}",
            *JOB,
            SEEDS,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("interpsuite: error:")]
    assert len(lines) == 1 and lines[0].endswith(f"pip install 'interpsuite[{extra}]'"), proc.stderr
    assert f"hydra/launcher={launcher} needs {EXTRAS[extra].plugin}" in lines[0]
    assert "Traceback" not in proc.stderr and not sweep.exists()


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has SLURM")
def test_the_slurm_launcher_without_sbatch_is_one_error(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _cli(["-m", "hydra/launcher=slurm", *JOB, SEEDS, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 2
    assert "interpsuite: error: hydra/launcher=slurm submits jobs with sbatch, which is not on PATH" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "sweep").exists()


def test_offline_w_and_b_runs_of_a_multirun_share_its_group(tmp_path):
    """Each job's W&B run (offline) is in the multirun's group, and results.json records group and run id."""
    sweep = tmp_path / "sweep"
    args = ["-m", *JOB[:-1], "wandb.mode=offline", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    group = default_group("default", sweep)
    for results in sorted(sweep.glob("*/results.json")):
        wandb = read_results(results.parent)["sinks"]["wandb"]
        assert (wandb["mode"], wandb["group"]) == ("offline", group)
        (run_file,) = results.parent.glob(f"wandb/offline-run-*-{wandb['run_id']}/run-{wandb['run_id']}.wandb")
        assert group.encode() in run_file.read_bytes()  # the run's own record names the group


def test_a_user_wandb_group_wins(tmp_path):
    """wandb.group=... given by the user is every job's group; results.json records it."""
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", *JOB, "seed=0,1", "wandb.group=my-sweep", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = [json.loads(p.read_text())["sinks"]["wandb"]["group"] for p in sorted(sweep.glob("*/results.json"))]
    assert groups == ["my-sweep", "my-sweep"]
    single = tmp_path / "single"
    proc = _cli([*JOB, f"hydra.run.dir={single}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_results(single)["sinks"]["wandb"]["group"] is None  # a single run has no group of its own


def test_default_group_names():
    assert default_group("quickstart", "multirun/quickstart/2025-01-31_12-00-00") == "quickstart-2025-01-31_12-00-00"
    assert default_group("quickstart", "/x/quickstart-run3") == "quickstart-run3"
    assert len(default_group("e" * 100, "/x/" + "d" * 100)) == 128
