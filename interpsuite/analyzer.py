"""The analyzer extension point: a named class with a typed config, validate() and run().

Modelled on captum's Attribution classes: small, explicit capabilities, no hidden state.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .figures import FigureStyle
from .hooks import parse_hook_name
from .progress import ProgressReporter, item_count
from .results import Result

if TYPE_CHECKING:  # pragma: no cover
    from .data import Inputs
    from .models import HookedModel, ModelInfo, TokenBatch


@dataclass
class NoConfig:
    """For analyzers without options."""


class Analyzer(ABC):
    """Base class for analyzers.

    - `name`: unique; configs select the analyzer with `analyzers.<name>`.
    - `family`: activation, attention, attribution, probing, gradient, mechanistic, safety.
    - `Config`: a dataclass; Hydra/OmegaConf validate option names and types against it.
    - `requires_causal_lm`: refuse encoders before loading weights.
    - `validate(info, cfg)`: every check that needs no weights (layer ranges, ...).
    - `run(ctx)`: the analysis; use `ctx.model` hooks, never raw torch hooks.
    """

    name: ClassVar[str]
    family: ClassVar[str] = "other"
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    requires_causal_lm: ClassVar[bool] = False
    #: how outputs combine over the windows of long documents (data.long_documents=window,
    #: docs/scale.md): "stitch" (per-token tables, those with `text_id` and `position` columns,
    #: keep each token from the window that owns it; statistics count `batch.counted_mask`),
    #: "accumulate" (global statistics over `batch.counted_mask`), "per_window" (one output per
    #: window plus a document summary). None: cannot combine, refused in window mode.
    window_outputs: ClassVar[str | None] = None

    def __init__(self, cfg: Any = None):
        self.cfg = cfg if cfg is not None else self.Config()

    def validate(self, info: ModelInfo, cfg: Any) -> None:  # noqa: B027 - optional, not abstract
        """Raise ConfigError for anything wrong that can be seen without weights (default: nothing)."""

    def estimate(self, info: ModelInfo, cfg: Any, workload: Any) -> Any:
        """What `run` will cost, before it runs: an `interpsuite.estimate.Cost` (forward/backward
        passes in tokens, peak activation memory, disk, figures, arithmetic of its own), built with
        the helpers of `workload` (an `interpsuite.estimate.Workload`: the run's inputs as token
        lengths, batch size, the model's dimensions). `interpsuite estimate` and the estimate at
        the start of every run turn it into seconds, bytes and flags (docs/scale.md).

        Default: one forward pass over the run's inputs, capturing nothing. Override it where
        `run` does other work: many passes (sweeps, integrated-gradient steps), training, prompt
        sets of its own, stores on disk, many figures."""
        return workload.forward_inputs()

    @abstractmethod
    def run(self, ctx: RunContext) -> Result:
        """The analysis: read `ctx.model` through captures/interventions, return a Result."""


def resolve_config(analyzer: Analyzer, info: ModelInfo) -> Any:
    """Call `validate`; a config it returns (layers resolved, say) becomes `analyzer.cfg`, so
    `run` never validates twice. The pipeline and `interpsuite.testing` both go through here."""
    resolved = analyzer.validate(info, analyzer.cfg)
    if resolved is not None:
        if not isinstance(resolved, type(analyzer.cfg)):
            from .errors import PluginError

            raise PluginError(
                f"{analyzer.name}.validate() returned {type(resolved).__name__}; return the resolved "
                f"{type(analyzer.cfg).__name__} or None"
            )
        analyzer.cfg = resolved
    return analyzer.cfg


def build_config(analyzer: type[Analyzer], options: Any) -> Any:
    """Options (dict / DictConfig / None) -> the analyzer's Config dataclass, validated."""
    schema = OmegaConf.structured(analyzer.Config)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(options or {}))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        fields = ", ".join(f.name for f in dataclasses.fields(analyzer.Config)) or "(none)"
        message = (getattr(err, "msg", None) or str(err)).splitlines()[0].rstrip(".")
        key = getattr(err, "full_key", None)
        where = f"analyzers.{analyzer.name}" + (f".{key}" if key else "")
        raise ConfigError(f"{where}: {message}. Options of {analyzer.name}: {fields}") from None


def check_layers(info: ModelInfo, layers: Sequence[int] | None, what: str) -> list[int]:
    """Validate layer indices (negative counts from the end); None means all layers."""
    if layers is None:
        return list(range(info.n_layers))
    resolved = []
    for layer in layers:
        index = layer + info.n_layers if layer < 0 else layer
        if not 0 <= index < info.n_layers:
            raise ConfigError(f"{what}: layer {layer} out of range; {info.name} has layers 0..{info.n_layers - 1}")
        resolved.append(index)
    if not resolved:
        raise ConfigError(f"{what}: empty layer list; give layer indices or null for all layers")
    return resolved


def check_hook_points(info: ModelInfo, names: Sequence[str], what: str) -> list[str]:
    """Validate hook-point names against what this architecture has (before weights load).

    A per-layer site without `blocks.L.` (e.g. `mlp.up`) is checked as a site; full names
    must exist. The message lists the model's valid points, so `mlp.up` on GPT-2 says what
    GPT-2 has instead.
    """
    valid = set(info.hook_points())
    sites = info.block_sites()
    for name in names:
        layer, site = parse_hook_name(str(name))
        if name in valid or (layer is None and site in sites):
            continue
        if layer is not None and site in sites:
            check_layers(info, [layer], f"{what} ({name})")
        listing = ", ".join([*info.global_sites(), *(f"blocks.{{L}}.{s}" for s in sites)])
        raise ConfigError(f"{what}: {info.name} ({info.architecture}) has no hook point {name!r}; it has: {listing}")
    return list(names)


def check_heads(info: ModelInfo, heads: Sequence[int] | None, what: str) -> list[int]:
    if heads is None:
        return list(range(info.n_heads))
    for head in heads:
        if not 0 <= head < info.n_heads:
            raise ConfigError(f"{what}: head {head} out of range; {info.name} has heads 0..{info.n_heads - 1}")
    return list(heads)


@dataclass
class RunContext:
    """What an analyzer gets: the model, the inputs, batching, progress bars, figure style."""

    model: HookedModel
    inputs: Inputs
    batch_size: int = 8
    max_length: int | None = 128
    seed: int = 0
    style: FigureStyle = field(default_factory=FigureStyle)
    show_progress: bool = True
    #: the run directory, for analyzers that write bulk data of their own (activation stores)
    run_dir: Path | None = None
    #: progress events and cancellation (interpsuite.progress): fed by progress(), bars shown or not
    reporter: ProgressReporter | None = None

    def data_dir(self, analyzer: str) -> Path:
        """A folder for an analyzer's bulk files: <run dir>/data/<analyzer> (a temp dir without a run dir)."""
        if self.run_dir is None:
            import tempfile

            return Path(tempfile.mkdtemp(prefix=f"interpsuite-{analyzer}-"))
        path = self.run_dir / "data" / analyzer
        path.mkdir(parents=True, exist_ok=True)
        return path

    def batches(self, desc: str = "batches") -> Iterator[TokenBatch]:
        texts = self.inputs.texts
        n_batches = (len(texts) + self.batch_size - 1) // self.batch_size
        return iter(self.progress(self.model.batches(texts, self.batch_size, self.max_length), desc, n_batches))

    def progress(self, iterable: Iterable, desc: str = "", total: int | None = None) -> Iterable:
        if self.reporter is not None and self.reporter.active:  # events per item; Cancelled between items
            total = total if total is not None else item_count(iterable)
            iterable = self.reporter.track(iterable, desc, total)
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)
