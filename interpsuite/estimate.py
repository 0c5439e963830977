"""Resource estimates before running: what each analyzer will cost, from the plan alone.

Every analyzer answers `Analyzer.estimate(info, cfg, workload) -> Cost`: the forward and
backward passes it runs (counted in tokens, the unit that scales, and as multiply-accumulates
from the model's dimensions), the activation memory alive at its peak, the disk its stores
take, the figures it draws, and arithmetic of its own outside the model (k-means, probes,
SAE training). The default is one forward pass over the run's inputs; analyzers that sweep,
train or read their own prompt sets say so in their override.

Seconds come from a short timed probe on this machine with this model (`estimate_probe`):
one forward, and one forward+backward, of a batch of the run's real tokens, which gives
seconds per multiply-accumulate and per pass; a small figure drawn and saved gives seconds
and bytes per figure. Memory adds the process as it stands after loading the weights (its
resident size, measured) to the analyzers' peaks. Flags say what will not fit (memory against
the free RAM or device memory, disk against the free space), and a `budget` (time_s,
memory_gb, disk_gb) stops a run whose estimate exceeds it unless `--yes`.

The estimate is printed at the start of every run and recorded in results.json under
"estimate"; `interpsuite estimate +experiment=NAME` prints it without running.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .estimate_model import (
    DTYPE_BYTES,
    PassShape,
    batch_shapes,
    hook_width,
    pass_macs,
    pass_memory,
    pass_tokens,
)

if TYPE_CHECKING:  # pragma: no cover
    from .estimate_probe import Calibration, Resources
    from .models import HookedModel, ModelInfo

#: characters per token where no tokenizer is at hand (English BPE averages ~4)
CHARS_PER_TOKEN = 4
#: bytes a table cell takes in CSV (numbers written by pandas with full float precision)
CSV_BYTES_PER_CELL = 12


@dataclass
class Cost:
    """What one analyzer's run() costs. Counts add up; `memory_bytes` is a peak (the larger of
    two costs), and `hold(bytes)` adds data the analyzer keeps alive across its passes."""

    forward_passes: int = 0
    #: tokens through the model in no-grad passes (full-model equivalents: half the blocks = half)
    forward_tokens: float = 0.0
    backward_passes: int = 0
    #: tokens through passes that are also differentiated (forward + backward)
    backward_tokens: float = 0.0
    forward_macs: float = 0.0
    backward_macs: float = 0.0
    #: passes weighted by the share of the blocks they run (a pass's fixed cost scales with it)
    forward_pass_layers: float = 0.0
    backward_pass_layers: float = 0.0
    #: arithmetic outside the model (probes, k-means, SAE training, lens translators), in MACs
    other_macs: float = 0.0
    figures: int = 0
    #: axes drawn over all figures (a grid of 30 x 9 heatmaps is 270)
    figure_panels: int = 0
    #: cells of the tables the sinks write (CSV; W&B tables cost far more per cell)
    table_cells: float = 0.0
    #: activations and data alive at the analyzer's peak, above the loaded model
    memory_bytes: float = 0.0
    #: stores, saved weights and tables (figures are counted from `figures`)
    disk_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __add__(self, other: Cost) -> Cost:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("memory_bytes", "notes")
        }
        notes = list(dict.fromkeys([*self.notes, *other.notes]))
        return Cost(**summed, memory_bytes=max(self.memory_bytes, other.memory_bytes), notes=notes)

    def __radd__(self, other: Any) -> Cost:  # sum([...]) starts from 0
        return self if other == 0 else NotImplemented

    def times(self, k: float) -> Cost:
        """The same work done k times (the peak memory is that of one)."""
        scaled = {
            f.name: getattr(self, f.name) * k
            for f in dataclasses.fields(self)
            if f.name not in ("memory_bytes", "notes", "forward_passes", "backward_passes", "figures", "figure_panels")
        }
        counts = {
            name: int(round(getattr(self, name) * k))
            for name in ("forward_passes", "backward_passes", "figures", "figure_panels")
        }
        return Cost(**scaled, **counts, memory_bytes=self.memory_bytes, notes=list(self.notes))

    def hold(self, nbytes: float) -> Cost:
        """This cost while `nbytes` of other data stay alive."""
        return dataclasses.replace(self, memory_bytes=self.memory_bytes + nbytes, notes=list(self.notes))

    def note(self, text: str) -> Cost:
        return dataclasses.replace(self, notes=[*self.notes, text])


@dataclass
class Workload:
    """What an analyzer's estimate may look at: the model's dimensions, the run's inputs as token
    lengths, the run settings, and (when loaded) the model itself for its tokenizer. The cost
    builders below turn shapes into `Cost`s, so an estimate reads like the run() it describes."""

    info: ModelInfo
    #: token length of each run input as run() sees it (after max_length / windowing)
    lengths: list[int]
    texts: list[str] = field(default_factory=list)
    batch_size: int = 8
    max_length: int | None = 128
    dtype_bytes: int = 4
    seed: int = 0
    run_dir: Path | None = None
    model: HookedModel | None = None
    #: every analyzer of the run by name -> its resolved config (an estimate may depend on another's:
    #: sae_eval reuses the SAE sae_train trains in the same run)
    planned: dict[str, Any] = field(default_factory=dict)

    # --- token counts ---------------------------------------------------------------------
    def token_lengths(self, texts: Sequence[str], max_length: int | None | str = "run") -> list[int]:
        """Tokens each text has as `model.tokenize(texts, max_length)` makes them ("run": the
        run's max_length). Without a loaded model: characters / 4."""
        limit = self.max_length if max_length == "run" else max_length
        texts = list(texts)
        if not texts:
            return []
        if self.model is not None:
            encode = getattr(self.model, "_encode", None)
            if encode is not None:
                return [len(row) for row in encode(texts, limit)]
            encoded = self.model.tokenizer(texts, truncation=limit is not None, max_length=limit)
            return [len(ids) for ids in encoded["input_ids"]]
        counts = [max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) for t in texts]
        return [min(n, limit) if limit else n for n in counts]

    def width_of(self, hook: str, keys: int = 0) -> int:
        """Elements per token of a hook point (patterns and scores: per query, over `keys` keys)."""
        return hook_width(self.info, hook, keys)

    @property
    def tokens(self) -> int:
        """Real tokens of the run's inputs."""
        return int(sum(self.lengths))

    def first(self, n: int | None) -> list[int]:
        """Lengths of the first n run inputs (all of them for None)."""
        return list(self.lengths if n is None else self.lengths[:n])

    # --- cost builders ----------------------------------------------------------------------
    def forward(
        self,
        rows: int,
        width: int,
        *,
        logits: int | None = None,
        start_layer: int = 0,
        start_position: int = 0,
        capture: Sequence[str] = (),
        grad: bool = False,
        count: int = 1,
    ) -> Cost:
        """`count` passes of `rows` x `width` tokens (logits: positions unembedded per row; None =
        every position; 0 = none, e.g. an encoder or a capture-only pass)."""
        if rows <= 0 or width <= 0 or count <= 0:
            return Cost()
        shape = PassShape(rows, width, start_layer, start_position, logits)
        macs = pass_macs(self.info, shape) * count
        tokens = pass_tokens(self.info, shape) * count
        memory = pass_memory(self.info, shape, self.dtype_bytes, capture, grad)
        share = count * max(0, self.info.n_layers - start_layer) / max(self.info.n_layers, 1)
        if grad:
            return Cost(
                backward_passes=count,
                backward_tokens=tokens,
                backward_macs=macs,
                backward_pass_layers=share,
                memory_bytes=memory,
            )
        return Cost(
            forward_passes=count,
            forward_tokens=tokens,
            forward_macs=macs,
            forward_pass_layers=share,
            memory_bytes=memory,
        )

    def forward_batches(self, lengths: Sequence[int], batch_size: int | None = None, **options: Any) -> Cost:
        """Passes over texts of these token lengths, batched in order (`HookedModel.batches`).
        `logits="last"`: only each row's last real token (`batch.last_positions()`)."""
        size = max(1, batch_size or self.batch_size)
        cost = Cost()
        for start in range(0, len(lengths), size):
            chunk = list(lengths[start : start + size])
            kept = options.get("logits")
            chosen = {**options, "logits": len(set(chunk)) if kept == "last" else kept}
            cost = cost + self.forward(len(chunk), max(chunk), **chosen)
        return cost

    def batches(self, lengths: Sequence[int] | None = None, batch_size: int | None = None) -> list[list[int]]:
        """The run's inputs (or `lengths`) cut into batches: the token lengths of each batch's rows."""
        lengths = self.lengths if lengths is None else list(lengths)
        size = max(1, batch_size or self.batch_size)
        return [list(lengths[i : i + size]) for i in range(0, len(lengths), size)]

    def forward_texts(
        self, texts: Sequence[str], batch_size: int | None = None, max_length: int | None | str = "run", **options: Any
    ) -> Cost:
        """Passes over texts of an analyzer's own (a shipped prompt set), tokenized here."""
        return self.forward_batches(self.token_lengths(texts, max_length), batch_size, **options)

    def forward_inputs(self, n: int | None = None, **options: Any) -> Cost:
        """One pass over (the first n of) the run's inputs in batches of the run's batch size: the
        default estimate of every analyzer."""
        return self.forward_batches(self.first(n), **options)

    def generate(self, rows: int, width: int, new_tokens: int, cached: bool = True, **options: Any) -> Cost:
        """Greedy decoding of `new_tokens` tokens (an upper bound: rows may stop at EOS). Cached
        (transformers' `generate`): the prompt once, then one token per row and step attending to
        everything before it; uncached: the whole growing prefix again at every step."""
        if new_tokens <= 0 or rows <= 0:
            return Cost()
        if not cached:
            return sum(
                (self.forward(rows, width + i, logits=options.get("logits", 1)) for i in range(new_tokens)), Cost()
            )
        cost = self.forward(rows, width, logits=1)
        for i in range(1, new_tokens):
            cost = cost + self.forward(rows, width + i, logits=1, start_position=width + i - 1)
        kv = 2 * self.info.n_layers * rows * (width + new_tokens) * self.info.n_kv_heads * self.info.d_head
        return cost.hold(kv * self.dtype_bytes)

    def each_text(self, lengths: Sequence[int], **options: Any) -> Cost:
        """One single-row pass per text (analyzers that explain texts one by one)."""
        return sum((self.forward(1, n, **options) for n in lengths), Cost())

    def sweep(
        self,
        rows: int,
        width: int,
        starts: Sequence[tuple[int, int]],
        batch_size: int = 32,
        *,
        logits: int | None = None,
        last_position: int | None = None,
        reuse_prefix: bool = True,
    ) -> Cost:
        """A `HookedModel.sweep` of len(starts) items over a batch of rows x width: items start at
        (layer, position) (an empty item: (n_layers, width)). Grouped into passes by the sweep
        engine's own planner, plus the reference run the passes start from. `logits`: positions
        kept per row (None: all); `last_position`: the earliest position whose logit is kept
        (a pass never starts after it)."""
        from .models.sweep import plan_sweep, reference_layers

        info = self.info
        n_layers = info.n_layers
        if not starts:
            return Cost()
        items_per_pass = max(1, batch_size // max(rows, 1))
        if reuse_prefix:
            latest = 0
            if info.is_causal and logits is not None and logits > 0:
                latest = max(0, width - logits if last_position is None else last_position)
            # encoders: every position sees every other, so a pass always computes them all
            clipped = [
                (min(layer, n_layers - 1), min(position, latest) if info.is_causal else 0) for layer, position in starts
            ]
        else:
            clipped = [(0, 0)] * len(starts)
        plan = plan_sweep(info, clipped, items_per_pass, rows, width, reuse_prefix=reuse_prefix)
        cost = Cost()
        for planned in plan:
            keep = logits if logits is None else min(logits, width - planned.position)
            at = {"start_layer": planned.layer, "start_position": planned.position}
            whole = self.forward(rows * len(planned.items), width, logits=keep, **at)
            # rows join at their own layer: the work is each group's from its layer on
            parts = [
                self.forward(rows * n, width, logits=keep, start_layer=entry, start_position=planned.position)
                for entry, n in planned.joining.items()
            ]
            cost = cost + dataclasses.replace(
                whole,
                forward_tokens=sum(part.forward_tokens for part in parts),
                forward_macs=sum(part.forward_macs for part in parts),
            )
        if any(planned.from_reference for planned in plan):  # the reference run
            cost = cost + self.forward(rows, width, logits=1 if info.is_causal else 0)
            longest = max(planned.position for planned in plan)
            prefix = 2 * n_layers * rows * longest * info.n_kv_heads * info.d_head * self.dtype_bytes
            resid = len(reference_layers(plan)) * rows * width * info.d_model * self.dtype_bytes
            cost = cost.hold(prefix + resid)
        return cost

    def sweep_batch(self, batch: Any, starts: Sequence[tuple[int, int]], batch_size: int, logits_to_keep: Any) -> Cost:
        """`sweep` over a real TokenBatch with the sweep's own `logits_to_keep` (0, an int or the
        tensor of kept positions): the latest start position as the sweep engine computes it."""
        width = int(batch.input_ids.shape[1])
        last = int(batch.last_index.min())
        if hasattr(logits_to_keep, "numel"):
            logits = int(logits_to_keep.numel())
            latest = min(int(logits_to_keep.min()), last) if logits else 0
        elif logits_to_keep:
            logits, latest = int(logits_to_keep), min(width - int(logits_to_keep), last)
        else:
            logits, latest = None, 0
        return self.sweep(batch.size, width, starts, batch_size, logits=logits, last_position=max(0, latest))

    def figures(self, n: int, panels: int | None = None) -> Cost:
        """n figures with `panels` axes in all (default one each)."""
        return Cost(figures=n, figure_panels=n if panels is None else panels)

    def macs(self, n: float) -> Cost:
        """Arithmetic of the analyzer's own, in multiply-accumulates."""
        return Cost(other_macs=float(n))

    @staticmethod
    def held(nbytes: float) -> Cost:
        return Cost(memory_bytes=float(nbytes))

    @staticmethod
    def disk(nbytes: float) -> Cost:
        return Cost(disk_bytes=float(nbytes))

    @staticmethod
    def table(rows: int, columns: int) -> Cost:
        """A table the sinks write (CSV in the run directory, a W&B table when W&B logs)."""
        return Cost(disk_bytes=float(rows * columns * CSV_BYTES_PER_CELL), table_cells=float(rows * columns))


# --- the estimate of a run ----------------------------------------------------------------
@dataclass
class AnalyzerEstimate:
    """One analyzer: the counts of its Cost, and seconds, memory and disk as the machine gives them."""

    name: str
    forward_passes: int
    forward_tokens: int
    backward_passes: int
    backward_tokens: int
    figures: int
    #: seconds of run() (compute, figure drawing); None without a calibration
    time_s: float | None
    #: seconds the sinks take to save its figures
    save_s: float | None
    #: peak activation and data memory above the loaded model
    memory_bytes: int
    disk_bytes: int
    notes: list[str] = field(default_factory=list)
    #: the analyzer's estimate failed: the default (one forward pass) stands in
    error: str | None = None


@dataclass
class Estimate:
    """The estimate of a run: per analyzer and in total, with what does not fit."""

    model: str
    device: str
    inputs: dict[str, int]
    analyzers: list[AnalyzerEstimate]
    #: resident memory of the process with the model loaded (measured), and its peak so far
    baseline_memory_bytes: int
    #: seconds before the analyzers start (validation, loading the weights): measured or None
    startup_s: float | None
    time_s: float | None
    memory_bytes: int
    disk_bytes: int
    available: dict[str, int | None]
    flags: list[str]
    calibration: dict[str, Any]
    budget: dict[str, Any] = field(default_factory=dict)
    over_budget: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """The table printed by `interpsuite estimate` and at the start of a run."""
        return format_estimate(self)


def estimate_costs(plan_analyzers: Sequence[Any], workload: Workload) -> list[tuple[str, Cost, str | None]]:
    """(name, cost, error) per planned analyzer; a failing estimate falls back to the default."""
    from .analyzer import Analyzer

    out = []
    for item in plan_analyzers:
        try:
            cost = item.analyzer.estimate(workload.info, item.config, workload)
            if not isinstance(cost, Cost):
                raise TypeError(f"estimate() returned {type(cost).__name__}, not Cost")
            out.append((item.name, cost, None))
        except Exception as err:  # an estimate must never cost the run
            cost = Analyzer.estimate(item.analyzer, workload.info, item.config, workload)
            reason = f"{type(err).__name__}: {err}"
            if workload.model is None and isinstance(err, AttributeError):
                reason = "it needs the model's tokenizer for its own prompts, which --no-probe does not load"
            out.append((item.name, cost, reason))
    return out


def build_estimate(
    costs: Sequence[tuple[str, Cost, str | None]],
    workload: Workload,
    calibration: Calibration | None,
    resources: Resources,
    *,
    device: str = "cpu",
    figure_formats: int = 2,
    draw_figures: bool = True,
    startup_s: float | None = None,
    budget: Any = None,
) -> Estimate:
    """Seconds, memory, disk and flags from the costs, the calibration and the machine."""
    analyzers = []
    for name, cost, error in costs:
        run_s = save_s = None
        if calibration is not None:
            run_s, save_s = calibration.seconds(cost, figure_formats, draw_figures)
        figure_disk = 0.0
        if calibration is not None and draw_figures:
            figure_disk = calibration.figure_bytes(cost, figure_formats)
        analyzers.append(
            AnalyzerEstimate(
                name=name,
                forward_passes=int(cost.forward_passes),
                forward_tokens=int(round(cost.forward_tokens)),
                backward_passes=int(cost.backward_passes),
                backward_tokens=int(round(cost.backward_tokens)),
                figures=int(cost.figures),
                time_s=run_s,
                save_s=save_s,
                memory_bytes=int(cost.memory_bytes),
                disk_bytes=int(cost.disk_bytes + figure_disk),
                notes=list(cost.notes),
                error=error,
            )
        )
    baseline = resources.baseline_bytes
    peak = max([a.memory_bytes for a in analyzers], default=0)
    memory = max(resources.peak_bytes, baseline + peak)
    disk = sum(a.disk_bytes for a in analyzers)
    time_s = None
    if calibration is not None:
        time_s = (startup_s or 0.0) + sum((a.time_s or 0.0) + (a.save_s or 0.0) for a in analyzers)
    flags = fit_flags(analyzers, baseline, memory, disk, resources, device)
    inputs = {"texts": len(workload.lengths), "tokens": int(sum(workload.lengths))}
    inputs["batches"] = len(batch_shapes(workload.lengths, workload.batch_size))
    estimate = Estimate(
        model=workload.info.name,
        device=device,
        inputs=inputs,
        analyzers=analyzers,
        baseline_memory_bytes=int(baseline),
        startup_s=startup_s,
        time_s=time_s,
        memory_bytes=int(memory),
        disk_bytes=int(disk),
        available=resources.to_dict(),
        flags=flags,
        calibration=calibration.to_dict() if calibration is not None else {},
    )
    if budget is not None:
        estimate.budget = {k: getattr(budget, k) for k in ("time_s", "memory_gb", "disk_gb", "assume_yes")}
        estimate.over_budget = budget_overruns(estimate, budget)
    return estimate


def fit_flags(
    analyzers: Sequence[AnalyzerEstimate],
    baseline: float,
    memory: float,
    disk: float,
    resources: Resources,
    device: str,
) -> list[str]:
    """What will not fit: the peak against free memory (RAM, or device memory on an accelerator),
    the disk against the free space of the run directory's file system."""
    flags = []
    on_device = not str(device).startswith("cpu") and resources.device_free_bytes is not None
    if on_device:
        worst = max(analyzers, key=lambda a: a.memory_bytes, default=None)
        if worst is not None and worst.memory_bytes > resources.device_free_bytes:
            flags.append(
                f"memory: {worst.name} needs ~{gb(worst.memory_bytes)} of activations on {device}, "
                f"{gb(resources.device_free_bytes)} free; lower batch_size or data.max_length"
            )
    elif resources.memory_available_bytes is not None:
        room = resources.memory_available_bytes + resources.rss_bytes  # what this process may grow to
        if memory > room:
            worst = max(analyzers, key=lambda a: a.memory_bytes, default=None)
            who = f" ({worst.name} the largest)" if worst is not None else ""
            flags.append(f"memory: peak ~{gb(memory)}{who}, {gb(room)} available; lower batch_size or data.max_length")
    if resources.disk_free_bytes is not None and disk > resources.disk_free_bytes:
        flags.append(f"disk: ~{gb(disk)} to write, {gb(resources.disk_free_bytes)} free under the run directory")
    for a in analyzers:
        if a.error:
            flags.append(f"{a.name}: its estimate failed ({a.error}); one forward pass over the inputs is assumed")
    return flags


def budget_overruns(estimate: Estimate, budget: Any) -> list[str]:
    """Each budget the estimate exceeds, as 'time ~X s > budget.time_s=Y'."""
    over = []
    if budget.time_s is not None and estimate.time_s is not None and estimate.time_s > budget.time_s:
        over.append(f"time ~{estimate.time_s:.0f} s > budget.time_s={budget.time_s:g}")
    if budget.memory_gb is not None and estimate.memory_bytes > budget.memory_gb * 1e9:
        over.append(f"memory ~{gb(estimate.memory_bytes)} > budget.memory_gb={budget.memory_gb:g}")
    if budget.disk_gb is not None and estimate.disk_bytes > budget.disk_gb * 1e9:
        over.append(f"disk ~{gb(estimate.disk_bytes)} > budget.disk_gb={budget.disk_gb:g}")
    return over


def check_budget(estimate: Estimate, yes: bool) -> None:
    """Refuse a run over budget (ConfigError, exit 2) unless the user said yes."""
    if not estimate.over_budget or yes:
        return
    first = estimate.over_budget[0]
    key = first.split("budget.", 1)[1].split("=", 1)[0]
    others = f" (also {'; '.join(estimate.over_budget[1:])})" if len(estimate.over_budget) > 1 else ""
    raise ConfigError(f"estimate over budget: {first}{others}; pass --yes or raise budget.{key}")


# --- formatting -----------------------------------------------------------------------------
def gb(nbytes: float | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.1f} GB"
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.0f} MB"
    return f"{nbytes / 1e3:.0f} kB"


def seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 100:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def _tokens(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return str(n)


def format_estimate(estimate: Estimate, notes: bool = True) -> str:
    header = ("analyzer", "fwd passes", "fwd tokens", "bwd passes", "bwd tokens", "memory", "disk", "time")
    rows = [
        (
            a.name,
            str(a.forward_passes),
            _tokens(a.forward_tokens),
            str(a.backward_passes),
            _tokens(a.backward_tokens),
            gb(estimate.baseline_memory_bytes + a.memory_bytes),
            gb(a.disk_bytes),
            seconds(None if a.time_s is None else a.time_s + (a.save_s or 0.0)),
        )
        for a in estimate.analyzers
    ]
    total = (
        "total",
        str(sum(a.forward_passes for a in estimate.analyzers)),
        _tokens(sum(a.forward_tokens for a in estimate.analyzers)),
        str(sum(a.backward_passes for a in estimate.analyzers)),
        _tokens(sum(a.backward_tokens for a in estimate.analyzers)),
        gb(estimate.memory_bytes),
        gb(estimate.disk_bytes),
        seconds(estimate.time_s),
    )
    widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    inputs = estimate.inputs
    out = [
        f"estimate: {estimate.model} on {estimate.device}, {inputs['texts']} inputs ({inputs['tokens']} tokens, "
        f"{inputs['batches']} batches); memory = the loaded model ({gb(estimate.baseline_memory_bytes)}) + the "
        f"analyzer's peak; time includes saving figures"
        + (f" and {seconds(estimate.startup_s)} of loading" if estimate.startup_s else ""),
        line(header),
        *[line(r) for r in rows],
        line(total),
    ]
    if notes:
        for a in estimate.analyzers:
            out += [f"  note: {a.name}: {n}" for n in a.notes]
    available = estimate.available
    out.append(
        f"available: memory {gb(available.get('memory_available_bytes'))}, disk {gb(available.get('disk_free_bytes'))}"
        + (f", device {gb(available['device_free_bytes'])}" if available.get("device_free_bytes") else "")
    )
    out += [f"warning: {flag}" for flag in estimate.flags]
    out += [f"over budget: {item}" for item in estimate.over_budget]
    return "\n".join(out)


# --- running it -------------------------------------------------------------------------------
def workload_for(model: HookedModel, texts: Sequence[str], settings: Any, run_dir: Path | None = None) -> Workload:
    """The workload of a run: its inputs' token lengths as the model tokenizes them."""
    info = model.info
    max_length = settings.max_length
    lengths: list[int] = []
    batch_size = settings.batch_size
    for start in range(0, len(texts), max(1, batch_size)):
        lengths += [len(row) for row in _encode(model, list(texts[start : start + batch_size]), max_length)]
    return Workload(
        info=info,
        lengths=lengths,
        texts=list(texts),
        batch_size=batch_size,
        max_length=max_length,
        dtype_bytes=_dtype_bytes(model),
        seed=settings.seed,
        run_dir=run_dir,
        model=model,
    )


def _encode(model: HookedModel, texts: list[str], max_length: int | None) -> list[list[int]]:
    if not texts:
        return []
    encode = getattr(model, "_encode", None)
    if encode is not None:
        return encode(texts, max_length)
    encoded = model.tokenizer(texts, truncation=max_length is not None, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def _dtype_bytes(model: HookedModel) -> int:
    try:
        dtype = next(model.hf_model.parameters()).dtype
    except (StopIteration, AttributeError):
        return 4
    return DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


@dataclass
class RunSettingsView:
    """The few run settings an estimate needs (from a pipeline or given directly)."""

    batch_size: int = 8
    max_length: int | None = 128
    seed: int = 0
    device: str = "cpu"
    figure_formats: int = 2
    draw_figures: bool = True
    #: the W&B sink logs every table (and renders every figure once more)
    wandb: bool = False
    budget: Any = None
    yes: bool = False


def estimate_for(
    model: HookedModel,
    plan: Any,
    texts: Sequence[str],
    settings: RunSettingsView,
    *,
    run_dir: Path | None = None,
    startup_s: float | None = None,
    probe: bool = True,
) -> Estimate:
    """The estimate of a validated plan on a loaded model (the probe runs here)."""
    from .estimate_probe import calibrate, machine_resources

    workload = workload_for(model, texts, settings, run_dir)
    workload.planned = {item.name: item.config for item in plan.analyzers}
    costs = estimate_costs(plan.analyzers, workload)
    calibration = None
    if probe:
        figures = settings.draw_figures and any(cost.figures for _, cost, _ in costs)
        probing = time.perf_counter()
        calibration = calibrate(model, workload, figures=figures, formats=settings.figure_formats)
        calibration.wandb = settings.wandb
        if startup_s is not None:  # the probe is part of the run's time too
            startup_s += time.perf_counter() - probing
    # measured after the probe: its passes have touched every weight (safetensors maps them
    # lazily) and brought the allocator to the state the analyzers' passes keep it in
    resources = machine_resources(run_dir, settings.device)
    return build_estimate(
        costs,
        workload,
        calibration,
        resources,
        device=settings.device,
        figure_formats=settings.figure_formats,
        draw_figures=settings.draw_figures,
        startup_s=startup_s,
        budget=settings.budget,
    )


def estimate_run(pipeline: Any, plan: Any, ctx: Any, started: float | None = None) -> dict[str, Any] | None:
    """The estimate at the start of a run (after the weights load): printed as a short block,
    returned for results.json, and a ConfigError when it exceeds the budget without `yes`.
    Anything else going wrong here costs the run nothing: the estimate is then left out."""
    settings = settings_of(pipeline, ctx.max_length)
    startup = time.perf_counter() - started if started is not None else None
    try:
        estimate = estimate_for(ctx.model, plan, ctx.inputs.texts, settings, run_dir=ctx.run_dir, startup_s=startup)
    except Exception as err:  # never let the estimate cost a run
        import logging

        logging.getLogger("interpsuite").warning("resource estimate skipped: %s: %s", type(err).__name__, err)
        return None
    # printed once per model object and process: a training monitor's runs (one per monitored
    # step, on the same model) would otherwise repeat it at every step
    if getattr(pipeline, "progress", False) and estimate.calibration.get("fresh", True):
        print(format_estimate(estimate, notes=False), file=sys.stderr, flush=True)
    check_budget(estimate, settings.yes)
    return estimate.to_dict()


def settings_of(pipeline: Any, max_length: int | None) -> RunSettingsView:
    """What the estimate needs of a pipeline (`max_length`: the model input length after windowing)."""
    budget = getattr(pipeline, "budget", None)
    formats = len(getattr(getattr(pipeline, "figures", None), "formats", None) or ["png", "pdf"])
    sinks = getattr(pipeline, "sink_names", None) or []
    wandb = "wandb" in sinks and (getattr(pipeline, "wandb_options", None) or {}).get("mode") != "disabled"
    return RunSettingsView(
        batch_size=pipeline.batch_size,
        max_length=max_length,
        seed=pipeline.seed,
        device=str(getattr(pipeline, "device", "cpu")),
        figure_formats=formats + int(wandb),  # the W&B sink renders every figure once more (PNG)
        draw_figures=bool(getattr(pipeline, "draw_figures", True)),
        wandb=wandb,
        budget=budget,
        yes=bool(getattr(pipeline, "yes", False) or getattr(budget, "assume_yes", False)),
    )
