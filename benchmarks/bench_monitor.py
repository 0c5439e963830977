"""Training monitor benchmark: what watching a training run costs, and redrawing figures.

1. **Monitor overhead.** The induction_emergence model (2-layer attention-only Llama, d 64)
   trained with the Hugging Face Trainer for `--steps` steps, side by side in one run:
   - `plain`: no callback;
   - `monitor`: `InterpsuiteCallback` with head_classification (the experiment's options)
     every `--every` steps, figures saved as data only (the monitor's default without W&B);
   - `monitor_drawn`: the same, every figure drawn and saved as PNG + PDF at every step.
   Reported: wall seconds, the overhead against `plain`, the monitor's own share
   (`monitor_fraction`), seconds per monitored step, and whether the trained parameters are
   bitwise equal to `plain`'s (they must be: the monitor does not perturb training).

2. **Redrawing a run's figures.** `interpsuite figures` on a quickstart-like run of tiny_llama
   (every figure of activation_stats, attention_entropy, head_classification, logit_lens):
   seconds in the run's style and in the paper style (PDF), against the run itself.

    python benchmarks/bench_monitor.py            # 600 steps, monitor every 25
    python benchmarks/bench_monitor.py --quick    # 100 steps, monitor every 50
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402

from interpsuite.emergence import EmergenceTraining, build_trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "monitor.json"
ANALYZERS = {"head_classification": {"seq_len": 24, "n_sequences": 16, "n_ablate": 2, "n_random_sets": 2}}
PROBE = ["The cat sat on the mat.", "Paris is the capital of France."]


def train(cfg: EmergenceTraining, out: Path, callback=None) -> tuple[float, dict[str, torch.Tensor]]:
    trainer, model, _ = build_trainer(cfg, out, [callback] if callback is not None else [], progress=False)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, {k: v.detach().clone() for k, v in model.state_dict().items()}


def monitor_overhead(cfg: EmergenceTraining, work: Path) -> dict[str, Any]:
    from interpsuite.callbacks import InterpsuiteCallback

    plain_s, plain_params = train(cfg, work / "plain")
    report: dict[str, Any] = {"plain": {"wall_s": round(plain_s, 2)}}
    for name, draw in (("monitor", None), ("monitor_drawn", True)):
        callback = InterpsuiteCallback(
            ANALYZERS, PROBE, every_n_steps=cfg.monitor_every, output_dir=work / name, draw_figures=draw
        )
        wall_s, params = train(cfg, work / f"{name}_trainer", callback)
        summary = callback.summary
        runs = len(summary["steps"])
        report[name] = {
            "wall_s": round(wall_s, 2),
            "overhead_vs_plain": round(wall_s / plain_s - 1, 4),
            "monitor_fraction": round(summary["monitor_fraction"], 4),
            "monitor_time_s": round(summary["monitor_time_s"], 2),
            "monitored_steps": runs,
            "seconds_per_monitored_step": round(summary["monitor_time_s"] / runs, 3),
            "params_bitwise_equal_to_plain": all(torch.equal(params[k], plain_params[k]) for k in plain_params),
        }
    return report


def redraw(work: Path) -> dict[str, Any]:
    from interpsuite import InterpretabilityPipeline
    from interpsuite.figure_command import redraw as redraw_run

    run_dir = work / "run"
    analyzers = {"activation_stats": {}, "attention_entropy": {}, "head_classification": {}, "logit_lens": {}}
    started = time.perf_counter()
    report = InterpretabilityPipeline(
        model="tiny_llama", data=PROBE * 4, analyzers=analyzers, output_dir=run_dir, sinks=["rundir"], progress=False
    ).run()
    run_s = time.perf_counter() - started
    n_figures = sum(len(e["figures"]) for e in report.payload["analyzers"].values())
    timings = {}
    for style, formats in (("run", ["png", "pdf"]), ("paper", ["pdf"])):
        started = time.perf_counter()
        result = redraw_run(run_dir, work / f"redraw_{style}", style=style, formats=formats)
        timings[style] = {
            "seconds": round(time.perf_counter() - started, 2),
            "figures": len(result.written),
            "formats": formats,
            "failed": result.failed,
        }
    return {"figures_in_run": n_figures, "run_with_figures_s": round(run_s, 2), "redraw": timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps, monitor every 50")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, every = (100, 50) if args.quick else (args.steps, args.every)
    cfg = EmergenceTraining(steps=steps, monitor_every=every)
    work = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        report = {
            "benchmark": "monitor",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "threads": args.threads,
            "training": {"steps": steps, "monitor_every": every, "model": "induction_emergence defaults"},
            "analyzers": ANALYZERS,
            "monitor_overhead": monitor_overhead(cfg, work),
            "figures": redraw(work),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or (Path("/tmp/bench_monitor_quick.json") if args.quick else RESULTS)
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
