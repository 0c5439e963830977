"""Hydra launchers (joblib, Ray, SLURM through submitit): checks before a multirun starts, each
job's exit code from what the launcher returns, and the W&B group the jobs of one multirun share.

We write no scheduler: `python -m interpsuite -m hydra/launcher=joblib|ray|submitit_slurm ...`
hands the jobs to Hydra's launcher plugins (optional extras `interpsuite[joblib|ray|slurm]`), and
our presets in `conf/hydra/launcher/` (ray_local, ray_cluster, slurm, slurm_gpu) only set values
(each extends a plugin's own config; tests compose every one).

Why each piece is here:
- A launcher whose plugin is not installed makes Hydra say "Could not find 'hydra/launcher/ray'",
  and one whose engine is missing fails inside the launch with a traceback. Both become one line
  naming the extra to install, before any job starts (exit code 2).
- A Ray address that does not answer makes `ray.init` retry for a long time. It is probed first,
  a TCP connect and one GCS call, each bounded by RAY_CONNECT_TIMEOUT_S; a cluster that wants a
  token the driver will not send (RAY_AUTH_MODE unset) is named as such.
- With joblib and Ray the jobs run in other processes, so the job outcomes that `hydra_app`
  records in its own process never reach the driver; the launcher's JobReturn values do
  (`return_value` is the job's exit code), collected by `collect_job_returns`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: seconds a Ray address gets to answer before the multirun is refused (env INTERPSUITE_RAY_CONNECT_TIMEOUT_S)
RAY_CONNECT_TIMEOUT_S = 10.0
#: Ray's default ports: the GCS of `ray start --head`, and the Ray Client server (ray://)
RAY_GCS_PORT, RAY_CLIENT_PORT = 6379, 10001
#: a W&B group name is at most 128 characters
WANDB_GROUP_MAX = 128


@dataclass(frozen=True)
class LauncherExtra:
    """What a launcher plugin needs installed, and the interpsuite extra that installs it."""

    extra: str
    plugin: str  # the Hydra plugin's distribution
    modules: tuple[str, ...]  # importable modules: the plugin and the engine it drives

    @property
    def install(self) -> str:
        return f"pip install 'interpsuite[{self.extra}]'"


EXTRAS = {
    "joblib": LauncherExtra("joblib", "hydra-joblib-launcher", ("hydra_plugins.hydra_joblib_launcher", "joblib")),
    "ray": LauncherExtra("ray", "hydra-ray-launcher", ("hydra_plugins.hydra_ray_launcher", "ray")),
    "slurm": LauncherExtra("slurm", "hydra-submitit-launcher", ("hydra_plugins.hydra_submitit_launcher", "submitit")),
}
#: `hydra/launcher=NAME` -> extra, for the plugins' own configs and our presets (conf/hydra/launcher)
LAUNCHER_EXTRAS = {
    "joblib": "joblib",
    "ray": "ray",
    "ray_aws": "ray",
    "ray_local": "ray",
    "ray_cluster": "ray",
    "submitit_slurm": "slurm",
    "submitit_local": "slurm",
    "slurm": "slurm",
    "slurm_gpu": "slurm",
}
_TARGET_EXTRAS = {
    "hydra_plugins.hydra_joblib_launcher.": "joblib",
    "hydra_plugins.hydra_ray_launcher.": "ray",
    "hydra_plugins.hydra_submitit_launcher.": "slurm",
}
RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


# --- before the multirun ----------------------------------------------------------------------
def installed(module: str) -> bool:
    """Whether `module` can be imported (a parent package that is missing counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(launcher: str, extra: str) -> None:
    """Refuse a launcher whose plugin or engine is not installed, naming the extra."""
    needs = EXTRAS[extra]
    missing = [m for m in needs.modules if not installed(m)]
    if missing:
        raise ConfigError(
            f"hydra/launcher={launcher} needs {needs.plugin} and {needs.modules[-1]} "
            f"({', '.join(missing)} not installed): {needs.install}"
        )


def requested_launcher(overrides: Sequence[str]) -> str | None:
    """The launcher named on the command line (`hydra/launcher=NAME`), the last one winning."""
    name = None
    for arg in overrides:
        match = re.fullmatch(r"(?:override\s+|\+\+?)?hydra/launcher=(\S+)", arg.strip())
        if match:
            name = match.group(1)
    return name


def fixed_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides without sweeps and flags: enough to compose the launcher's settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    kept = []
    for arg in overrides:
        if arg.startswith("-"):
            continue
        try:
            (parsed,) = parser.parse_overrides([arg])
        except Exception:  # Hydra reports a malformed override itself, in its own words
            continue
        if not parsed.is_sweep_override():
            kept.append(arg)
    return kept


def prepare_multirun(overrides: Sequence[str]) -> list[str]:
    """Check the chosen launcher before any job starts; returns overrides to add.

    Raises ConfigError (exit code 2) for a launcher that is not installed, a Ray address that
    does not answer, and the SLURM launcher on a machine without `sbatch`. A composition error
    that has nothing to do with the launcher is left to Hydra, which reports it as before.
    """
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import compose

    name = requested_launcher(overrides)
    if name in LAUNCHER_EXTRAS:
        require_extra(name, LAUNCHER_EXTRAS[name])
    try:
        cfg = compose(fixed_overrides(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        missing = re.search(r"hydra/launcher/(\w+)", str(err))
        if missing and missing.group(1) in LAUNCHER_EXTRAS:
            require_extra(missing.group(1), LAUNCHER_EXTRAS[missing.group(1)])
        return []
    name = str(OmegaConf.select(cfg, "hydra.runtime.choices.hydra/launcher", default=name) or name)
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    for prefix, extra in _TARGET_EXTRAS.items():
        if target.startswith(prefix):
            require_extra(name, extra)
    if target == RAY_LAUNCHER:
        return _prepare_ray(name, cfg)
    if target == SLURM_LAUNCHER and shutil.which("sbatch") is None:
        raise ConfigError(
            f"hydra/launcher={name} submits jobs with sbatch, which is not on PATH here: run the multirun on "
            "a SLURM login node (hydra/launcher=submitit_local runs the same jobs on this machine)"
        )
    return []


def _prepare_ray(name: str, cfg) -> list[str]:
    from omegaconf import OmegaConf

    init = OmegaConf.select(cfg, "hydra.launcher.ray.init", default=None) or {}
    address = init.get("address") or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "", "local"):
        return []  # Ray starts a local cluster for this multirun
    if address != "auto":
        check_ray_address(str(address))
    extra = []
    if "object_store_memory" not in init:
        # the plugin sets a small object store for starting Ray itself (setdefault), which
        # ray.init refuses when it connects to a running cluster
        extra.append("++hydra.launcher.ray.init.object_store_memory=null")
    return extra


def ray_host_port(address: str) -> tuple[str, int]:
    """`host:port`, `ray://host:port` or a bare host -> (host, port) with Ray's default ports."""
    rest = address.strip()
    client = rest.startswith("ray://")
    rest = rest.removeprefix("ray://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or port == "" or "]" in port:
        host, port = rest, ""
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"Ray address {address!r} has no host; use HOST:PORT, e.g. 10.0.0.5:{RAY_GCS_PORT}")
    if port and not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: port {port!r} is not a number; use HOST:PORT")
    return host, int(port) if port else (RAY_CLIENT_PORT if client else RAY_GCS_PORT)


def check_ray_address(address: str, timeout_s: float | None = None) -> None:
    """Refuse a Ray address that does not answer as a Ray cluster within `timeout_s` seconds.

    A TCP connection first (refused, unreachable, silent), then one call to the cluster's GCS
    (`GetClusterId`, the call `ray.init` starts with): a port that accepts connections but is
    not Ray (another service, a proxy that accepts everything) is refused too. `ray://` (Ray
    Client) addresses get the connection and an HTTP/2 handshake only."""
    timeout_s = ray_connect_timeout() if timeout_s is None else timeout_s
    host, port = ray_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except TimeoutError:
        _refuse_ray(address, port, f"no answer within {timeout_s:g} s")
    except OSError as err:
        _refuse_ray(address, port, err.strerror or type(err).__name__)
    reason = _gcs_call(host, port, timeout_s, client=address.strip().startswith("ray://"))
    if reason == _AUTH_REQUIRED:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return  # ray.init sends the token
        # ray.init would retry for a minute: Ray sends its token to an explicit address only when asked
        raise ConfigError(
            f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token for this "
            "command, with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (Ray's token-auth docs)"
        )
    if reason is not None:
        _refuse_ray(address, port, reason)


_AUTH_REQUIRED = "token authentication required"


def ray_connect_timeout() -> float:
    value = os.environ.get("INTERPSUITE_RAY_CONNECT_TIMEOUT_S")
    if value is None:
        return RAY_CONNECT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ConfigError(f"INTERPSUITE_RAY_CONNECT_TIMEOUT_S={value!r}: expected a number of seconds > 0, e.g. 10")
    return seconds


def _refuse_ray(address: str, port: int, reason: str) -> None:
    raise ConfigError(
        f"Ray address {address} does not answer ({reason}): start the cluster (`ray start --head "
        f"--port {port}`) or fix hydra.launcher.ray.init.address (null starts a local Ray for this multirun)"
    )


def _gcs_call(host: str, port: int, timeout_s: float, client: bool) -> str | None:
    """None if a Ray GCS (or Ray Client server) answers at host:port, else why not."""
    try:
        import grpc  # a dependency of ray
    except ImportError:
        return None  # the TCP connection is all we can check
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        if client:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        else:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=timeout_s)
        return None
    except grpc.FutureTimeoutError:
        return f"no answer within {timeout_s:g} s"
    except grpc.RpcError as err:
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {timeout_s:g} s"
        if code == grpc.StatusCode.UNAVAILABLE:
            return "connection refused" if "refused" in str(err.details()).lower() else "unavailable"
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            return f"not a Ray cluster: its GCS call returned {code.name}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return _AUTH_REQUIRED
        return None  # a server that knows the call answered
    finally:
        channel.close()


# --- during the multirun ----------------------------------------------------------------------
def default_group(experiment: str, sweep_dir: str | Path) -> str:
    """`<experiment>-<sweep folder>`, e.g. quickstart-2025-01-31_12-00-00 (at most 128 characters)."""
    folder = Path(str(sweep_dir)).name or "multirun"
    group = folder if folder.startswith(f"{experiment}-") else f"{experiment}-{folder}"
    return group[:WANDB_GROUP_MAX]


def apply_multirun_group(cfg) -> str | None:
    """In a multirun job, set `wandb.group` to the multirun's group unless the user chose one.

    Every job of one multirun derives the same name from the sweep directory, wherever it runs
    (the sweep dir is resolved once, in the driver, and shipped with the job's config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    chosen = OmegaConf.select(cfg, "wandb.group", default=None)
    if chosen not in (None, ""):
        return str(chosen)
    experiment = str(OmegaConf.select(cfg, "experiment_name", default="run") or "run")
    group = default_group(experiment, hydra_cfg.sweep.dir)
    with open_dict(cfg):
        OmegaConf.update(cfg, "wandb.group", group, force_add=True)
    return group


# --- after the multirun -----------------------------------------------------------------------
@contextlib.contextmanager
def collect_job_returns(into: list, crashes: list | None = None) -> Iterator[list]:
    """Gather the JobReturn values of the multirun Hydra runs inside this block into `into`.

    Hydra's `main` drops the sweep's returns; this wraps `Hydra.multirun` (hydra-core 1.3, pinned)
    for the duration of the block so the driver sees every job's outcome, wherever it ran.

    A launch that raises something other than a configuration error (a joblib or Ray worker that
    died, a lost cluster) is appended to `crashes`: Hydra turns both kinds into the same
    `sys.exit(1)`, and the driver must tell a failed job (exit 1) from a refused config (exit 2)."""
    from hydra._internal.hydra import Hydra

    original = Hydra.multirun

    def multirun(self, *args: Any, **kwargs: Any) -> Any:
        try:
            returns = original(self, *args, **kwargs)
        except Exception as err:
            if crashes is not None and not is_config_error(err):
                crashes.append(err)
            raise
        into.extend(_flatten(returns))
        return returns

    Hydra.multirun = multirun
    try:
        yield into
    finally:
        Hydra.multirun = original


def is_config_error(err: BaseException) -> bool:
    """Whether Hydra or OmegaConf refused the configuration (composition, overrides, a sweep's
    values) or our own checks did, as opposed to a launch that broke while jobs ran."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import InterpsuiteError

    return isinstance(err, (HydraException, OmegaConfBaseException, InterpsuiteError))


def _flatten(returns: Any) -> list:
    from hydra.core.utils import JobReturn

    if isinstance(returns, JobReturn):
        return [returns]
    if isinstance(returns, (list, tuple)):
        return [r for item in returns for r in _flatten(item)]
    return []  # a sweeper that returns something else (optuna: the best params)


def job_outcomes(returns: Sequence[Any], failed_code: int) -> list[tuple[int, str, int]]:
    """(job number, override_dirname, exit code) for each JobReturn, in job order.

    `return_value` is the exit code `hydra_app` returned; a job whose function raised (status
    FAILED) counts as `failed_code`."""
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    outcomes = []
    for index, ret in enumerate(returns):
        hydra_cfg = ret.hydra_cfg if ret.hydra_cfg is not None else OmegaConf.create()
        number = OmegaConf.select(hydra_cfg, "hydra.job.num", default=index)
        overrides = OmegaConf.select(hydra_cfg, "hydra.job.override_dirname", default=None)
        if overrides is None:
            overrides = ",".join(ret.overrides or [])
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        code = value if isinstance(value, int) and not isinstance(value, bool) else failed_code
        outcomes.append((int(number), str(overrides or ""), code))
    return sorted(outcomes, key=lambda outcome: outcome[0])
