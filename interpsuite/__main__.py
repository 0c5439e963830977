"""`python -m interpsuite +experiment=NAME key=value ...` (Hydra app; `-m` for multirun).

Exit codes (README, docs/reference.md): 0 every analyzer ok or skipped; 1 one or more
failed (all results kept); 2 a configuration or input error, reported as one line before
any weights load; 130 interrupted (finished analyzers kept, the running one marked
`interrupted`). A multirun prints one line per job and exits with the worst code.

Hydra creates the run directory and reports its own composition errors with a hint about
HYDRA_FULL_ERROR and exit code 1. So a single run is composed and checked here first
(settings, inputs, analyzer options, a writable run directory), which turns every such
mistake into our one line and exit code 2 before Hydra touches the disk.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_NAME, PRIMARY_CONFIG, compose, searchpath_override
from .emergence import plan_emergence, run_planned
from .errors import AnalyzerError, ConfigError, InterpsuiteError
from .launchers import apply_multirun_group, collect_job_returns, job_outcomes, prepare_multirun
from .model_comparison import plan_comparison, run_comparison
from .pipeline import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, InterpretabilityPipeline
from .report import format_report
from .settings import check_writable_dir
from .temporal import plan_temporal, run_temporal


@dataclass
class JobOutcome:
    number: int
    overrides: str
    exit_code: int


_JOBS: list[JobOutcome] = []


def _error(message: str) -> None:
    print(f"interpsuite: error: {message}", file=sys.stderr)


def run_job(cfg: DictConfig) -> int:
    """One Hydra job: build, run, report; every failure becomes an exit code, never a traceback."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        emergence = plan_emergence(_plain(cfg), output_dir)
        if emergence is not None:
            emergence.validate()
            return run_emergence_job(emergence)
        temporal = plan_temporal(_plain(cfg), output_dir, list(hydra_cfg.overrides.task))
        if temporal is not None:
            temporal.validate()  # every checkpoint's pipeline, before the first one loads
            return run_temporal_job(temporal)
        plan = plan_comparison(_plain(cfg), output_dir, list(hydra_cfg.overrides.task))
        if plan is not None:
            plan.validate()
            return run_comparison_job(plan, output_dir)
        pipeline = InterpretabilityPipeline.from_config(
            cfg, output_dir=output_dir, user_overrides=list(hydra_cfg.overrides.task)
        )
        report = pipeline.run()
    except AnalyzerError as err:  # fail_fast stopped the run; what finished is in results.json
        _error(f"{err}; the results so far are in {output_dir / 'results.json'}")
        return EXIT_FAILED
    except InterpsuiteError as err:
        _error(str(err))
        return EXIT_CONFIG
    except Exception as err:  # a bug of ours or a plugin's: one line, the traceback in a file
        log = output_dir / "logs" / "interpsuite.traceback.txt"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f"traceback in {log}"
        except OSError:
            where = "traceback not saved"
        _error(f"unexpected {type(err).__name__}: {err} ({where}); please report it")
        return EXIT_FAILED
    print(format_report(report))
    return report.exit_code


@hydra.main(version_base="1.3", config_path=PRIMARY_CONFIG, config_name=CONFIG_NAME)
def hydra_app(cfg: DictConfig) -> int:
    """One job; returns its exit code, which joblib/Ray/SLURM launchers hand back as `return_value`."""
    job = HydraConfig.get().job
    number = int(job.get("num", 0) or 0)
    overrides = str(job.get("override_dirname", "") or "")
    apply_multirun_group(cfg)  # every job of one multirun logs to one W&B group
    try:
        code = run_job(cfg)
    except KeyboardInterrupt:
        _JOBS.append(JobOutcome(number, overrides, EXIT_INTERRUPTED))
        raise
    _JOBS.append(JobOutcome(number, overrides, code))
    return code


def preflight(overrides: list[str]) -> None:
    """Compose and check a single run's config without loading weights or creating folders."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(overrides, return_hydra_config=True)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except (HydraException, OmegaConfBaseException) as err:
        raise _hydra_error(err) from None
    plan = plan_emergence(_plain(cfg), run_dir) or plan_temporal(_plain(cfg), run_dir, overrides)
    plan = plan if plan is not None else plan_comparison(_plain(cfg), run_dir, overrides)
    if plan is not None:
        plan.validate()  # every model's (checkpoint's) pipeline, before the first one loads
    else:
        InterpretabilityPipeline.from_config(cfg, output_dir=run_dir, user_overrides=overrides).validate()
    check_writable_dir(run_dir, "run directory (hydra.run.dir)", create=False)


def _plain(cfg: DictConfig) -> dict:
    """The composed config as a plain dict without Hydra's own node."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(container), resolve=True)


def run_comparison_job(plan, output_dir: Path) -> int:
    """`models=[...]`: one pipeline per model, then the comparison report."""
    outcome = run_comparison(plan)
    for report in outcome.reports:
        print(format_report(report))
    if outcome.comparison is None:
        _error(f"no comparison report: {outcome.error}")
        return worst([r.exit_code for r in outcome.reports] + [EXIT_FAILED])
    present = [s.name for s in outcome.comparison.sections if s.present]
    shared = ", ".join(present) or "no shared analyses"
    print(f"comparison of {', '.join(plan.models)} ({shared}): {outcome.comparison.html}")
    return worst([r.exit_code for r in outcome.reports])


def run_emergence_job(plan) -> int:
    """`train:` (+experiment=induction_emergence): train with the monitor, then the summary."""
    payload = run_planned(plan)
    entry = payload["analyzers"][plan.experiment if plan.experiment in payload["analyzers"] else "induction_emergence"]
    metrics = entry["metrics"]
    failed = [name for name, check in entry["checks"].items() if not check["passed"]]
    print(
        f"induction score {metrics['initial_induction_score']:.3f} at step 0 -> {metrics['final_induction_score']:.3f} "
        f"at the end; largest jump at step {metrics['jump_step']:.0f}; loss on the repeated copy "
        f"{metrics['loss_second_copy_before_jump']:.3f} -> {metrics['loss_second_copy_at_jump']:.3f} at the jump; "
        f"monitor {100 * metrics['monitor_fraction']:.1f}% of training time: {plan.output_dir}"
    )
    if failed:
        _error(f"checks failed: {', '.join(failed)}")
        return EXIT_FAILED
    return EXIT_OK


def run_temporal_job(plan) -> int:
    """`checkpoints=...`: one pipeline per checkpoint (none for a monitor directory), then the summary."""
    outcome = run_temporal(plan)
    for report in outcome.reports:
        print(format_report(report))
    summary = outcome.result.summary
    moved = ", ".join(f"{c['metric']} at step {c['split_step']}" for c in summary["top_changes"][:3]) or "nothing"
    print(f"temporal summary of steps {summary['steps']} ({summary['source']}); moved most: {moved}: {plan.output_dir}")
    return outcome.exit_code


def _hydra_error(err: Exception) -> ConfigError:
    """Hydra's composition error (unknown key, missing group option, bad syntax) as one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Config search path:" in lines:  # the search path listing is Hydra's debugging aid, not the message
        lines = lines[: lines.index("Config search path:")]
    head = [line for line in lines if not line.startswith(("full_key", "object_type", "reference_type"))]
    message = " ".join(head[:2]) if head else type(err).__name__
    if len(head) > 2 and message.endswith(":"):  # "Available options in 'experiment':" + one per line
        message += " " + ", ".join(head[2:])
    return ConfigError(f"{message} (see `interpsuite experiments`, `interpsuite plugins`, docs/reference.md)")


def worst(codes: list[int]) -> int:
    """The exit code of a multirun: interrupted, then config error, then failure, then ok."""
    for code in (EXIT_INTERRUPTED, EXIT_CONFIG, EXIT_FAILED):
        if code in codes:
            return code
    return EXIT_OK


def run_cli(argv: list[str]) -> int:
    _JOBS.clear()
    argv = yes_override(argv)
    try:
        extra = searchpath_override(user=argv)
        overrides = [*argv, *([extra] if extra else [])]
        if not any(arg.startswith("-") for arg in argv):  # a single run (flags: multirun, --help, --cfg ...)
            preflight(overrides)
        elif "-m" in argv or "--multirun" in argv:  # the launcher installed and reachable, before any job
            overrides += prepare_multirun(overrides)
    except InterpsuiteError as err:
        _error(str(err))
        return EXIT_CONFIG
    sys.argv = [sys.argv[0], *overrides]
    returns: list = []  # the launcher's JobReturns: jobs of joblib/Ray/SLURM ran in other processes
    crashes: list = []  # a launch that broke while jobs ran (a dead worker), not a refused config
    try:
        with collect_job_returns(returns, crashes):
            hydra_app()
    except KeyboardInterrupt:
        print("interpsuite: interrupted; finished analyzers are kept in results.json", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as stop:
        if stop.code not in (0, None) and crashes:
            crash = crashes[0]
            _error(
                f"the launcher failed while jobs ran ({type(crash).__name__}: {_first_line(crash)}); "
                "jobs that finished keep their results.json"
            )
            return worst([j.exit_code for j in _JOBS] + [EXIT_FAILED])
        if stop.code not in (0, None) and not _JOBS:
            return EXIT_CONFIG  # Hydra refused the config (multirun) and printed why
        if stop.code not in (0, None):
            return worst([j.exit_code for j in _JOBS] + [EXIT_FAILED])
    if returns:
        _JOBS[:] = [JobOutcome(*outcome) for outcome in job_outcomes(returns, EXIT_FAILED)]
    if len(_JOBS) > 1:
        for job in _JOBS:
            print(f"job {job.number} ({job.overrides or 'no overrides'}): exit code {job.exit_code}")
    return worst([job.exit_code for job in _JOBS])


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def yes_override(argv: list[str]) -> list[str]:
    """`--yes` (run even when the resource estimate exceeds `budget`) as the override budget.assume_yes=true,
    so every job of a multirun, and every pipeline a job makes, gets it through the config."""
    if "--yes" not in argv:
        return list(argv)
    return [*(arg for arg in argv if arg != "--yes"), "budget.assume_yes=true"]


def main() -> None:
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    # run the importable module's main: launchers pickle `hydra_app` by reference
    # (interpsuite.__main__.hydra_app), which a `__main__` function cannot be
    from interpsuite.__main__ import main as _main

    _main()
