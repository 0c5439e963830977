"""The timed probe behind the estimate's seconds, and what the machine has free.

Model timing: the run's first batch (cut or repeated to about PROBE_TOKENS tokens) and a
one-row batch of a few tokens, each timed as a plain forward pass and as a forward+backward
pass (the gradient of the top logit at the last token with respect to the embeddings, as the
gradient analyzers take it). Two sizes separate the cost per multiply-accumulate from the
fixed cost of a pass; each is timed a few times after a warm-up and the fastest kept (a busy
machine slows a call down, never speeds it up). A square float32 matrix product gives the rate
of the analyzers' own arithmetic. The probe runs under `torch.random.fork_rng`, so it changes
no random state a seeded run relies on, and it never touches parameter gradients. Timings are
kept per model object for the life of the process (a training monitor probes once, not at
every step). Measured on SmolLM2 on 2 CPU cores: about 2 s.

Sink timing: one figure with one heatmap and one with a 3 x 3 grid, drawn in the default
FigureStyle and saved the way the run-directory sink saves them, give seconds and bytes per
figure and per panel; a table written as CSV gives seconds per cell (once per process).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .estimate_model import PassShape, pass_macs

#: tokens of the large probe batch (the run's first batch, cut or repeated to about this many)
PROBE_TOKENS = 128
#: tokens of the one-row probe
SMALL_PROBE_TOKENS = 8
#: timed calls of the small and the large probe pass after the warm-up (the fastest counts: a
#: busy machine slows some calls, never speeds one up)
PROBE_REPEATS = (3, 2)
#: side of the square matrix product timed for the analyzers' own arithmetic (768^3 = 0.45G MACs)
MATMUL_SIZE = 768
#: forward+backward / forward time where no backward can be probed (frozen parameters): the
#: textbook ratio (the backward pass multiplies by each weight twice: for inputs and weights)
BACKWARD_RATIO = 3.0
#: panels of the large figure probe
PROBE_GRID = 3

#: rows of the table probe (x 9 columns)
TABLE_PROBE_ROWS = 5000
#: a W&B table cell (wandb.Table from a DataFrame, then logged offline) against a CSV cell:
#: 18 us against 0.78 us on this project's CI machine (180k cells)
WANDB_CELL_RATIO = 23

_MODEL_TIMINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TABLE_CELL_S: float | None = None
_FIGURE_TIMINGS: dict[int, FigureTiming] = {}


@dataclass
class ModelTiming:
    forward_s_per_mac: float
    forward_pass_s: float
    backward_s_per_mac: float
    backward_pass_s: float
    probe_tokens: int
    probe_s: float
    backward_probed: bool
    #: resident memory after the first forward pass (weights loaded lazily are resident by then)
    rss_after_forward: int = 0
    #: seconds per MAC of a large float32 matrix product on the model's device: the rate of the
    #: analyzers' own arithmetic (probes, k-means, SVDs, SAE training), which runs at full size
    matmul_s_per_mac: float = 0.0


@dataclass
class FigureTiming:
    draw_s: float
    draw_panel_s: float
    #: saving one figure in one format, and per panel
    save_s: float
    save_panel_s: float
    bytes: float
    panel_bytes: float
    probe_s: float


@dataclass
class Calibration:
    model: ModelTiming
    figures: FigureTiming | None = None
    #: the model was probed just now (not a timing kept from an earlier run on the same model)
    fresh: bool = True
    #: seconds to write one table cell as CSV (pandas), measured
    table_cell_s: float = 0.0
    #: the run logs to W&B: every table cell costs WANDB_CELL_RATIO CSV cells more
    wandb: bool = False

    def seconds(self, cost: Any, formats: int, draw_figures: bool = True) -> tuple[float, float]:
        """(seconds of run(), seconds of saving its figures) for a Cost."""
        m = self.model
        passes_s = m.forward_pass_s * cost.forward_pass_layers + m.backward_pass_s * cost.backward_pass_layers
        other = m.matmul_s_per_mac or m.forward_s_per_mac
        compute = m.forward_s_per_mac * cost.forward_macs + m.backward_s_per_mac * cost.backward_macs
        compute += other * cost.other_macs
        run_s = compute + passes_s
        save_s = cost.table_cells * self.table_cell_s * (1 + (WANDB_CELL_RATIO if self.wandb else 0))
        f = self.figures
        if f is not None and draw_figures and cost.figures:
            run_s += f.draw_s * cost.figures + f.draw_panel_s * cost.figure_panels
            save_s += formats * (f.save_s * cost.figures + f.save_panel_s * cost.figure_panels)
        return run_s, save_s

    def figure_bytes(self, cost: Any, formats: int) -> float:
        f = self.figures
        if f is None or not cost.figures:
            return 0.0
        return formats * (f.bytes * cost.figures + f.panel_bytes * cost.figure_panels)

    def to_dict(self) -> dict[str, Any]:
        figures = asdict(self.figures) if self.figures else None
        return {
            "model": asdict(self.model),
            "figures": figures,
            "table_cell_s": self.table_cell_s,
            "wandb": self.wandb,
            "fresh": self.fresh,
        }


@dataclass
class Resources:
    """Memory and disk as they stand: the process (with the model loaded) and what is free."""

    rss_bytes: int
    peak_rss_bytes: int
    memory_available_bytes: int | None
    disk_free_bytes: int | None
    device_free_bytes: int | None = None

    @property
    def baseline_bytes(self) -> int:
        return self.rss_bytes

    @property
    def peak_bytes(self) -> int:
        return self.peak_rss_bytes

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


# --- the machine ------------------------------------------------------------------------------
def machine_resources(run_dir: Path | None, device: str = "cpu") -> Resources:
    rss, peak = process_memory()
    available = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: /proc/meminfo on Linux
        available = _meminfo_available()
    return Resources(rss, peak, available, _disk_free(run_dir), _device_free(device))


def process_memory() -> tuple[int, int]:
    """(resident bytes now, peak resident bytes so far) of this process."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports kB, macOS bytes
    try:
        import psutil

        rss = int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:
        rss = _statm_rss() or peak
    return rss, max(peak, rss)


def _statm_rss() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _disk_free(run_dir: Path | None) -> int | None:
    path = Path(run_dir or ".").expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None


def _device_free(device: str) -> int | None:
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index or 0
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:  # no driver, a MIG slice that refuses the query: not knowable here
        return None


# --- the probe ----------------------------------------------------------------------------------
def calibrate(model: Any, workload: Any, figures: bool = True, formats: int = 2) -> Calibration:
    """Model timing (once per model object) and, when the run draws figures, figure timing."""
    import torch

    key = (workload.batch_size, workload.max_length, torch.get_num_threads(), str(model.device))
    cache = _MODEL_TIMINGS.setdefault(model.hf_model, {})
    fresh = key not in cache
    if fresh:
        cache[key] = probe_model(model, workload)
    figure_timing = probe_figures(formats) if figures else None
    return Calibration(cache[key], figure_timing, fresh, probe_tables())


def probe_tables() -> float:
    """Seconds per cell of writing a table as CSV (pandas, numbers at full precision), once per process."""
    global _TABLE_CELL_S
    if _TABLE_CELL_S is None:
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame(np.random.default_rng(0).random((TABLE_PROBE_ROWS, 8)))
        frame["layer"] = 1
        started = time.perf_counter()
        frame.to_csv(io.StringIO(), index=False)
        _TABLE_CELL_S = (time.perf_counter() - started) / frame.size
    return _TABLE_CELL_S


def _probe_batch(model: Any, workload: Any):
    """The run's first batch, its rows cut (long texts) or repeated (short ones) to about
    PROBE_TOKENS tokens, and one row of SMALL_PROBE_TOKENS tokens."""
    texts = list(workload.texts[: workload.batch_size]) or ["The quick brown fox jumps over the lazy dog."]
    batch = model.tokenize(texts, workload.max_length)
    width = int(batch.input_ids.shape[1])
    rows = max(1, min(batch.size, PROBE_TOKENS // max(width, 1)))
    if rows < batch.size:
        batch = model.tokenize(texts[:rows], workload.max_length)
    elif batch.n_tokens < PROBE_TOKENS:
        batch = batch.repeat(max(1, round(PROBE_TOKENS / max(batch.n_tokens, 1))))
    small = model.tokenize(texts[:1], min(SMALL_PROBE_TOKENS, workload.max_length or SMALL_PROBE_TOKENS))
    return batch, small


def _timed(fn, device, repeats: int = 1) -> float:
    """Seconds of one call (CUDA: synchronised), the fastest of `repeats`."""
    import torch

    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _forward(model: Any, batch: Any):
    import torch

    def run() -> None:
        with torch.no_grad():
            output = model.forward(batch).output
            if model.info.is_causal:
                torch.log_softmax(output.float(), -1)  # what analyzers do with full logits (LOGIT_ELEMENT_MACS)

    return run


def _backward(model: Any, batch: Any):
    import torch

    keep, column = batch.last_positions()

    def run() -> None:
        out = model.forward(batch, capture=["embed"], grad=True, logits_to_keep=keep)
        embed = out.cache["embed"]
        rows = torch.arange(batch.size, device=out.output.device)
        value = out.output[rows, column].max(-1).values.sum() if model.info.is_causal else out.output.norm()
        torch.autograd.grad(value, embed)

    return run


def _solve(small: tuple[float, float], large: tuple[float, float]) -> tuple[float, float]:
    """(seconds per MAC, seconds per pass) from two (MACs, seconds) points."""
    (m1, t1), (m2, t2) = small, large
    if m2 > m1 and t2 > t1:
        per_mac = (t2 - t1) / (m2 - m1)
        return per_mac, max(0.0, t1 - per_mac * m1)
    return t2 / max(m2, 1.0), 0.0


def probe_model(model: Any, workload: Any) -> ModelTiming:
    import torch

    started = time.perf_counter()
    info = model.info
    batch, small = _probe_batch(model, workload)
    shapes = {
        "large": PassShape(batch.size, int(batch.input_ids.shape[1])),
        "small": PassShape(small.size, int(small.input_ids.shape[1])),
    }
    kept = {"large": len(batch.last_positions()[0]), "small": len(small.last_positions()[0])}
    fwd_macs = {k: pass_macs(info, s) for k, s in shapes.items()}
    bwd_macs = {k: pass_macs(info, PassShape(s.rows, s.width, logits=kept[k])) for k, s in shapes.items()}
    device = torch.device(model.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _forward(model, small)()  # warm-up: first-call allocations, lazily loaded weights
        rss = process_memory()[0]
        small_repeats, large_repeats = PROBE_REPEATS
        fwd = {
            "small": _timed(_forward(model, small), device, small_repeats),
            "large": _timed(_forward(model, batch), device, large_repeats),
        }
        backward_probed = True
        try:
            _backward(model, small)()  # warm-up of autograd
            bwd = {
                "small": _timed(_backward(model, small), device, small_repeats),
                "large": _timed(_backward(model, batch), device, large_repeats),
            }
        except RuntimeError:  # frozen parameters and no embedding gradient: the textbook ratio
            backward_probed = False
            bwd = {k: BACKWARD_RATIO * fwd[k] * bwd_macs[k] / max(fwd_macs[k], 1.0) for k in fwd}
    f_mac, f_pass = _solve((fwd_macs["small"], fwd["small"]), (fwd_macs["large"], fwd["large"]))
    b_mac, b_pass = _solve((bwd_macs["small"], bwd["small"]), (bwd_macs["large"], bwd["large"]))
    return ModelTiming(
        forward_s_per_mac=f_mac,
        forward_pass_s=f_pass,
        backward_s_per_mac=b_mac,
        backward_pass_s=b_pass,
        probe_tokens=int(batch.n_tokens),
        probe_s=time.perf_counter() - started,
        backward_probed=backward_probed,
        rss_after_forward=rss,
        matmul_s_per_mac=_matmul_rate(device, small_repeats),
    )


def _matmul_rate(device, repeats: int) -> float:
    """Seconds per multiply-accumulate of a [MATMUL_SIZE x MATMUL_SIZE] float32 product."""
    import torch

    a = torch.full((MATMUL_SIZE, MATMUL_SIZE), 0.5, device=device)  # no random numbers: the run's RNG stays
    a @ a  # warm-up
    return _timed(lambda: a @ a, device, repeats) / MATMUL_SIZE**3


def probe_figures(formats: int) -> FigureTiming:
    """Seconds and bytes per figure and per panel, drawn and saved as a run saves them."""
    if formats in _FIGURE_TIMINGS:
        return _FIGURE_TIMINGS[formats]
    started = time.perf_counter()
    one = _figure_sample(1, formats)
    grid = _figure_sample(PROBE_GRID, formats)
    panels = PROBE_GRID * PROBE_GRID - 1
    per = [max(0.0, (g - o) / panels) for o, g in zip(one, grid, strict=True)]
    draw_panel, save_panel, panel_bytes = per
    timing = FigureTiming(
        draw_s=max(0.0, one[0] - draw_panel),
        draw_panel_s=draw_panel,
        save_s=max(0.0, one[1] - save_panel) / max(formats, 1),
        save_panel_s=save_panel / max(formats, 1),
        bytes=max(0.0, one[2] - panel_bytes) / max(formats, 1),
        panel_bytes=panel_bytes / max(formats, 1),
        probe_s=time.perf_counter() - started,
    )
    _FIGURE_TIMINGS[formats] = timing
    return timing


def _figure_sample(side: int, formats: int) -> tuple[float, float, float]:
    """(draw seconds, save seconds for `formats` formats, bytes) of a side x side heatmap grid."""
    import numpy as np

    from .figures import FigureStyle
    from .sinks.rundir import save_figure

    chosen = ["png", "pdf", "svg"][: max(1, min(formats, 3))]
    style = FigureStyle()
    data = np.random.default_rng(0).random((16, 16))
    start = time.perf_counter()
    with style.context():
        fig, axes = style.figure(side, side)
        for ax in axes.flat:
            image = ax.imshow(data, cmap="viridis")
            ax.set_title("layer 0")
            ax.set_xticks(range(0, 16, 2))
            ax.set_yticks(range(0, 16, 2))
        fig.colorbar(image, ax=axes)
        fig.suptitle("probe")
    drawn = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="interpsuite-estimate-") as folder, style.context():
        paths = save_figure(fig, Path(folder) / "probe", chosen)
        saved = time.perf_counter()
        size = sum(p.stat().st_size for p in paths)
    scale = formats / len(chosen)
    return drawn - start, (saved - drawn) * scale, size * scale
