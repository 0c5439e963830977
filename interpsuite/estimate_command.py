"""`interpsuite estimate +experiment=NAME [overrides]`: the resource estimate of a run, without running it.

The arguments are the run's own Hydra overrides; the config is composed and checked exactly as
`python -m interpsuite` checks it (the same one-line errors, exit code 2). Then the weights load
(unless they alone would not fit in memory), the timed probe runs, and a table per analyzer and
in total is printed, with what will not fit. `--json PATH` also writes the estimate as JSON
(`-` for stdout); `--no-probe` skips loading and timing (passes, memory and disk only, token
counts approximated from characters).

Runs of several pipelines are estimated pipeline by pipeline: `models=[...]` (each model),
`checkpoints=...` (the first checkpoint, times their number) and `train:` experiments (the
training steps plus the monitor's analyzers at every monitored step).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InterpsuiteError
from .estimate import (
    Cost,
    Estimate,
    Workload,
    build_estimate,
    estimate_for,
    format_estimate,
    gb,
    seconds,
    settings_of,
)

USAGE = (
    "usage: interpsuite estimate +experiment=NAME [key=value ...] [--json PATH] [--no-probe]\n"
    "Estimates forward/backward passes (tokens), peak memory, disk and time of the run the same\n"
    "arguments would start, per analyzer and in total, and flags what will not fit.\n"
    "exit codes: 0 estimated, 2 configuration error"
)


def _options(argv: Sequence[str]) -> tuple[list[str], str | None, bool]:
    overrides, json_path, probe = [], None, True
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(print(USAGE) or 0)
        if arg == "--no-probe":
            probe = False
        elif arg == "--json":
            if not args:
                raise InterpsuiteError("--json needs a path (or - for stdout)")
            json_path = args.pop(0)
        elif arg.startswith("--json="):
            json_path = arg.split("=", 1)[1]
        elif arg == "--yes":
            continue  # a run flag; the estimate itself never refuses
        elif arg.startswith("-"):
            raise InterpsuiteError(f"unknown option {arg!r} for estimate; see `interpsuite estimate --help`")
        else:
            overrides.append(arg)
    return overrides, json_path, probe


def estimate_cli(argv: Sequence[str]) -> int:
    from .__main__ import _error

    try:
        overrides, json_path, probe = _options(argv)
        estimates = estimate_overrides(overrides, probe=probe)
    except SystemExit as stop:
        return int(stop.code or 0)
    except InterpsuiteError as err:
        _error(str(err))
        return 2
    for title, estimate in estimates:
        if title:
            print(f"== {title}")
        print(format_estimate(estimate))
    if len(estimates) > 1:
        total = sum((e.time_s or 0.0) for _, e in estimates)
        peak = max(e.memory_bytes for _, e in estimates)
        disk = sum(e.disk_bytes for _, e in estimates)
        print(f"all {len(estimates)} parts: time {seconds(total)}, peak memory {gb(peak)}, disk {gb(disk)}")
    if json_path:
        payload = [{"part": title, **estimate.to_dict()} for title, estimate in estimates]
        text = json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, default=str)
        if json_path == "-":
            print(text)
        else:
            Path(json_path).write_text(text + "\n")
    return 0


def estimate_overrides(overrides: Sequence[str], probe: bool = True) -> list[tuple[str, Estimate]]:
    """Compose the run config of these overrides and estimate it: [(part title, Estimate)]."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .__main__ import _hydra_error, _plain, yes_override
    from .config import compose
    from .emergence import plan_emergence
    from .model_comparison import plan_comparison
    from .pipeline import InterpretabilityPipeline
    from .temporal import plan_temporal

    overrides = yes_override(list(overrides))
    started = time.perf_counter()
    try:
        cfg = compose(overrides, return_hydra_config=True)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except (HydraException, OmegaConfBaseException) as err:
        raise _hydra_error(err) from None
    emergence = plan_emergence(_plain(cfg), run_dir)
    if emergence is not None:
        emergence.validate()
        return [("", estimate_emergence(emergence, probe))]
    temporal = plan_temporal(_plain(cfg), run_dir, overrides)
    if temporal is not None:
        temporal.validate()
        if not temporal.pipelines:
            raise InterpsuiteError(
                "checkpoints is a training monitor's directory: its records are read, no analyzer runs (nothing "
                "to estimate)"
            )
        first = estimate_pipeline(temporal.pipelines[0], probe, started)
        n = len(temporal.pipelines)
        return [(f"checkpoint 1 of {n} (each checkpoint costs about the same)", first)]
    comparison = plan_comparison(_plain(cfg), run_dir, overrides)
    if comparison is not None:
        comparison.validate()
        return [
            (f"model {name}", estimate_pipeline(pipeline, probe, time.perf_counter()))
            for name, pipeline in zip(comparison.models, comparison.pipelines, strict=True)
        ]
    pipeline = InterpretabilityPipeline.from_config(cfg, output_dir=run_dir, user_overrides=overrides)
    return [("", estimate_pipeline(pipeline, probe, started))]


def estimate_pipeline(pipeline: Any, probe: bool = True, started: float | None = None) -> Estimate:
    """Validate a pipeline, load its model (unless the weights alone would not fit) and estimate."""
    from .estimate_model import model_params
    from .estimate_probe import machine_resources
    from .models import HookedModel

    started = time.perf_counter() if started is None else started
    plan = pipeline.validate()
    info = plan.model_info
    resources = machine_resources(plan.run_dir, str(pipeline.device))
    weights = model_params(info) * _dtype_size(pipeline.dtype)
    room = resources.device_free_bytes if resources.device_free_bytes is not None else resources.memory_available_bytes
    if isinstance(pipeline.model, HookedModel):
        model = pipeline.model
    elif not probe or (room is not None and weights > room):
        return _without_weights(pipeline, plan, resources, weights, room)
    else:
        model = pipeline.load_weights()
    texts, max_length = plan.inputs.texts, pipeline.data.max_length
    if pipeline.data.long_documents == "window":
        inputs, max_length = pipeline._windowed(model, plan.inputs)
        texts = inputs.texts
    return estimate_for(
        model,
        plan,
        texts,
        settings_of(pipeline, max_length),
        run_dir=plan.run_dir,
        startup_s=time.perf_counter() - started,
    )


def _dtype_size(dtype: Any) -> int:
    from .estimate_model import DTYPE_BYTES

    return DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


def _without_weights(pipeline: Any, plan: Any, resources: Any, weights: float, room: float | None) -> Estimate:
    """Passes, memory and disk from the dimensions alone (no tokenizer: characters / 4, no time)."""
    from .estimate import estimate_costs

    settings = settings_of(pipeline, pipeline.data.max_length)
    workload = Workload(
        info=plan.model_info,
        lengths=[],
        texts=list(plan.inputs.texts),
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        dtype_bytes=_dtype_size(pipeline.dtype),
        seed=settings.seed,
        run_dir=plan.run_dir,
    )
    workload.lengths = workload.token_lengths(workload.texts)
    workload.planned = {item.name: item.config for item in plan.analyzers}
    costs = estimate_costs(plan.analyzers, workload)
    resources.rss_bytes += int(weights)  # the weights, once loaded
    resources.peak_rss_bytes = max(resources.peak_rss_bytes, resources.rss_bytes)
    estimate = build_estimate(
        costs,
        workload,
        None,
        resources,
        device=settings.device,
        figure_formats=settings.figure_formats,
        draw_figures=settings.draw_figures,
        budget=settings.budget,
    )
    if room is not None and weights > room:
        estimate.flags.insert(
            0,
            f"memory: the weights alone take ~{gb(weights)}, {gb(room)} available: not loaded, time not estimated; "
            "use a smaller dtype (model.dtype=bfloat16) or a device map (docs/model-layer.md)",
        )
    else:
        estimate.flags.insert(0, "--no-probe: token counts from characters / 4, time not estimated")
    return estimate


def estimate_emergence(plan: Any, probe: bool = True) -> Estimate:
    """A `train:` experiment: the training steps (forward + backward with weight gradients) and the
    monitor's analyzers at every monitored step, on the model the experiment builds."""
    from .emergence import attention_only_model
    from .models import wrap
    from .models.sources import byte_tokenizer
    from .pipeline import InterpretabilityPipeline

    cfg = plan.training
    started = time.perf_counter()
    tokenizer = byte_tokenizer()
    hooked = wrap(attention_only_model(cfg, tokenizer), tokenizer)
    pipeline = InterpretabilityPipeline(
        model=hooked,
        data=plan.data,
        analyzers=plan.analyzers,
        experiment="monitor",
        batch_size=plan.settings.batch_size,
        sinks=["rundir"],
        draw_figures=False,  # the monitor saves figure data only unless W&B logs them
        output_dir=plan.output_dir / "monitor",
    )
    monitored = len(set(range(0, cfg.steps + 1, cfg.monitor_every)) | {cfg.steps})
    step = estimate_pipeline(pipeline, probe, started)
    width = 1 + 2 * cfg.segment
    training = Workload(info=hooked.info, lengths=[], batch_size=cfg.batch_size)
    cost = training.forward(cfg.batch_size, width, grad=True, count=cfg.steps)
    # weight gradients cost another pass's worth of multiply-accumulates on top of the probe's
    cost = cost + training.macs(cost.backward_macs)
    cost = cost.note(f"{cfg.steps} steps of {cfg.batch_size} x {width} tokens (HF Trainer, weight gradients)")
    return _with_training(step, cost, monitored, hooked, pipeline)


def _with_training(step: Estimate, cost: Cost, monitored: int, hooked: Any, pipeline: Any) -> Estimate:
    from .estimate import AnalyzerEstimate
    from .estimate_probe import _MODEL_TIMINGS, Calibration

    timings = list(_MODEL_TIMINGS.get(hooked.hf_model, {}).values())
    run_s = None
    if timings:
        run_s, _ = Calibration(timings[0]).seconds(cost, 0, False)
    training = AnalyzerEstimate(
        name="training",
        forward_passes=0,
        forward_tokens=0,
        backward_passes=int(cost.backward_passes),
        backward_tokens=int(cost.backward_tokens),
        figures=0,
        time_s=run_s,
        save_s=0.0,
        memory_bytes=int(cost.memory_bytes),
        disk_bytes=0,
        notes=list(cost.notes),
    )
    for a in step.analyzers:
        a.forward_passes *= monitored
        a.forward_tokens *= monitored
        a.backward_passes *= monitored
        a.backward_tokens *= monitored
        a.disk_bytes *= monitored
        a.time_s = None if a.time_s is None else a.time_s * monitored
        a.save_s = None if a.save_s is None else a.save_s * monitored
        a.notes.append(f"at each of {monitored} monitored steps")
    step.analyzers.insert(0, training)
    step.memory_bytes = max(step.memory_bytes, step.baseline_memory_bytes + training.memory_bytes)
    step.disk_bytes = sum(a.disk_bytes for a in step.analyzers)
    if step.time_s is not None:
        step.time_s = (step.startup_s or 0.0) + sum((a.time_s or 0.0) + (a.save_s or 0.0) for a in step.analyzers)
    return step


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m interpsuite.estimate_command`
    return estimate_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
