"""PruningPlan: what to prune (weights, MLP neurons or attention heads), made from importance scores.

A plan is plain data (so the server can send it, a run directory can keep it, and one plan can
be applied, measured and exported): for unstructured pruning a boolean keep-mask per weight,
for structured pruning the sorted unit ids per layer. It never holds the model; `apply(model)`
zeroes in place and restores exactly (see `masks`), `export(model, path)` writes a Hugging
Face folder (see `export`).

Scores follow one convention: higher = more important; the lowest are pruned. Unstructured
plans compare weights within each OUTPUT row by default (Wanda's comparison group; used for
magnitude too), so the achieved sparsity is exact to within one element per row.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from interpsuite.errors import ConfigError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from interpsuite.models.hooked import HookedModel

    from .export import ExportReport

__all__ = ["GRANULARITIES", "SCOPES", "PruningPlan", "SparsityReport", "check_sparsity", "plan_from_scores"]

Granularity = Literal["unstructured", "neurons", "heads"]
Scope = Literal["per_row", "per_layer", "global"]
GRANULARITIES: tuple[str, ...] = ("unstructured", "neurons", "heads")
SCOPES: tuple[str, ...] = ("per_row", "per_layer", "global")
ARTIFACT_KIND = "pruning_plan"


def check_sparsity(sparsity: Any) -> float:
    """A sparsity in [0, 1) as float, or one ConfigError line (1.0 would remove everything)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity {sparsity} is outside [0, 1); give the fraction to prune, e.g. 0.5")
    return float(sparsity)


@dataclass
class SparsityReport:
    """Fraction pruned per module (param name, or `blocks.L.mlp` / `blocks.L.attn`) and overall."""

    overall: float
    per_module: dict[str, float]
    pruned: int
    total: int


@dataclass
class PruningPlan:
    """What to prune. `masks` (unstructured): param name -> bool keep-mask shaped like the weight;
    `row_dims`: for each mask, the dimension indexing output rows (0 for nn.Linear, 1 for GPT-2
    Conv1D). `units` (neurons/heads): layer -> sorted unit ids, with `units_per_layer` (d_mlp or
    n_heads) and `n_layers` so sparsity is measured against the whole model."""

    granularity: Granularity
    criterion: str
    sparsity: float
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    row_dims: dict[str, int] = field(default_factory=dict)
    units: dict[int, list[int]] = field(default_factory=dict)
    units_per_layer: int = 0
    n_layers: int = 0
    scope: str = "per_layer"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        self.sparsity = check_sparsity(self.sparsity)
        if self.granularity == "unstructured":
            if self.units:
                raise ConfigError("an unstructured plan prunes weights through `masks`, not `units`")
            for name, mask in self.masks.items():
                if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                    raise ConfigError(f"the mask of {name} must be a bool tensor (True = keep)")
            return
        if self.masks:
            raise ConfigError(f"a {self.granularity} plan prunes `units` per layer, not `masks`")
        if self.units_per_layer <= 0 or self.n_layers <= 0:
            raise ConfigError(
                f"a {self.granularity} plan needs units_per_layer and n_layers (the model's sizes); make it with "
                f"plan_from_scores or PruningPlan.for_units"
            )
        clean: dict[int, list[int]] = {}
        for layer, ids in self.units.items():
            ids = [int(i) for i in ids]
            if len(set(ids)) != len(ids):
                raise ConfigError(f"layer {layer} lists a {self._unit} twice: {ids}; give each id once")
            bad = [i for i in ids if i < 0 or (self.units_per_layer and i >= self.units_per_layer)]
            if bad:
                raise ConfigError(f"layer {layer}: {self._unit} ids {bad} are outside [0, {self.units_per_layer})")
            clean[int(layer)] = sorted(ids)
        self.units = dict(sorted(clean.items()))
        if self.granularity == "heads" and self.units_per_layer:
            for layer, ids in self.units.items():
                if len(ids) == self.units_per_layer:
                    warnings.warn(
                        f"layer {layer}: every attention head is pruned; the layer's attention writes only its bias",
                        stacklevel=3,
                    )

    @classmethod
    def for_units(
        cls, model: HookedModel, granularity: Granularity, units: dict[int, list[int]], criterion: str = "manual"
    ) -> PruningPlan:
        """A structured plan from explicit unit ids (neurons or heads per layer); `sparsity` is what it prunes."""
        if granularity not in ("neurons", "heads"):
            raise ConfigError(f"for_units makes neurons or heads plans, not {granularity!r}")
        n = model.info.d_mlp if granularity == "neurons" else model.info.n_heads
        total = n * model.info.n_layers
        pruned = sum(len(ids) for ids in units.values())
        plan = cls(
            granularity,
            criterion,
            min(pruned / total, math.nextafter(1.0, 0.0)),
            units=units,
            units_per_layer=n,
            n_layers=model.info.n_layers,
        )
        plan.validate_for(model)
        return plan

    @property
    def _unit(self) -> str:
        return "neuron" if self.granularity == "neurons" else "head"

    # --- what it prunes --------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.granularity} by {self.criterion} at {self.sparsity:g}"

    def counts(self) -> dict[int, int]:
        """Units pruned per layer (structured plans; every layer of the model, 0 where none)."""
        return {layer: len(self.units.get(layer, [])) for layer in range(self.n_layers)}

    def achieved_sparsity(self) -> SparsityReport:
        """The fraction the plan prunes (not what the requested `sparsity` says), per module and overall."""
        if self.granularity == "unstructured":
            per, pruned, total = {}, 0, 0
            for name, keep in self.masks.items():
                dropped = int(keep.numel() - keep.sum())
                per[name] = dropped / keep.numel() if keep.numel() else 0.0
                pruned, total = pruned + dropped, total + keep.numel()
            return SparsityReport(pruned / total if total else 0.0, per, pruned, total)
        suffix = "mlp" if self.granularity == "neurons" else "attn"
        per = {f"blocks.{layer}.{suffix}": n / self.units_per_layer for layer, n in self.counts().items()}
        pruned, total = sum(self.counts().values()), self.n_layers * self.units_per_layer
        return SparsityReport(pruned / total if total else 0.0, per, pruned, total)

    def row_errors(self) -> dict[str, float]:
        """Per mask: max over output rows of |pruned in the row - sparsity x row length| (elements).

        The known answer for per-row plans: <= 0.5 (round) and so within one element per row."""
        errors = {}
        for name, keep in self.masks.items():
            rows = keep.movedim(self.row_dims.get(name, 0), 0).reshape(keep.shape[self.row_dims.get(name, 0)], -1)
            pruned = (~rows).sum(dim=1).to(torch.float64)
            errors[name] = float((pruned - self.sparsity * rows.shape[1]).abs().max()) if rows.numel() else 0.0
        return errors

    def summary(self) -> dict[str, Any]:
        """A small JSON payload (for Result.summary and the server)."""
        report = self.achieved_sparsity()
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "criterion": self.criterion,
            "scope": self.scope,
            "sparsity": self.sparsity,
            "achieved_sparsity": report.overall,
            "pruned": report.pruned,
            "total": report.total,
        }
        if self.granularity == "unstructured":
            out["modules"] = len(self.masks)
        else:
            out["per_layer"] = {str(layer): n for layer, n in self.counts().items()}
        return out

    # --- checks against a model ---------------------------------------------------------
    def validate_for(self, model: HookedModel) -> None:
        """One ConfigError line when the plan does not fit the model (names, shapes, layers, ids)."""
        info = model.info
        if self.granularity == "unstructured":
            parameters = dict(model.hf_model.named_parameters())
            for name, keep in self.masks.items():
                if name not in parameters:
                    raise ConfigError(f"the plan masks {name!r}, which {info.name} has no parameter called")
                if tuple(keep.shape) != tuple(parameters[name].shape):
                    raise ConfigError(
                        f"the mask of {name} is {tuple(keep.shape)} but the weight is "
                        f"{tuple(parameters[name].shape)}; make the plan on this model"
                    )
            return
        expected = info.d_mlp if self.granularity == "neurons" else info.n_heads
        if self.n_layers != info.n_layers:
            raise ConfigError(
                f"the plan is for {self.n_layers} layers but {info.name} has {info.n_layers}; "
                f"make the plan on this model"
            )
        if self.units_per_layer != expected:
            raise ConfigError(
                f"the plan has {self.units_per_layer} {self._unit}s per layer but {info.name} has {expected}; "
                f"make the plan on this model"
            )
        bad = [layer for layer in self.units if not 0 <= layer < info.n_layers]
        if bad:
            raise ConfigError(f"the plan prunes layers {bad} but {info.name} has layers 0..{info.n_layers - 1}")
        for layer, ids in self.units.items():
            if ids and max(ids) >= expected:
                raise ConfigError(f"layer {layer}: {self._unit} id {max(ids)} is outside [0, {expected})")

    # --- using it ----------------------------------------------------------------------
    def apply(self, model: HookedModel) -> AbstractContextManager[HookedModel]:
        """`with plan.apply(model):` the model is pruned in place; restored bit-exactly on exit."""
        from .masks import masked

        return masked(model, self)

    def export(self, model: HookedModel, path: str | Path, overwrite: bool = False, **options) -> ExportReport:
        """A standard Hugging Face folder of the pruned model (see `export.export_pruned`)."""
        from .export import export_pruned

        return export_pruned(model, self, path, overwrite=overwrite, **options)

    # --- serialisation -----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Everything but the mask tensors (they go to safetensors through `save`), as JSON-able data."""
        spec: dict[str, Any] = {
            "granularity": self.granularity,
            "criterion": self.criterion,
            "sparsity": self.sparsity,
            "scope": self.scope,
            "units_per_layer": self.units_per_layer,
            "n_layers": self.n_layers,
            "units": {str(layer): ids for layer, ids in self.units.items()},
            "row_dims": dict(self.row_dims),
            "masks": {name: list(mask.shape) for name, mask in self.masks.items()},
        }
        return spec

    @classmethod
    def from_json(cls, spec: dict[str, Any], masks: dict[str, torch.Tensor] | None = None) -> PruningPlan:
        """The inverse of `to_json`; an unstructured plan needs the `masks` its spec lists."""
        try:
            granularity = spec["granularity"]
            listed = spec.get("masks") or {}
            masks = masks or {}
            if granularity == "unstructured" and set(listed) != set(masks):
                raise ConfigError(
                    f"the plan lists masks for {len(listed)} weights but {len(masks)} were given; load it with "
                    f"PruningPlan.load"
                )
            for name, shape in listed.items():
                if list(masks[name].shape) != list(shape):
                    raise ConfigError(f"the mask of {name} is {list(masks[name].shape)}, the plan says {shape}")
            return cls(
                granularity=granularity,
                criterion=str(spec["criterion"]),
                sparsity=spec["sparsity"],
                masks={name: masks[name].to(torch.bool) for name in listed},
                row_dims={str(k): int(v) for k, v in (spec.get("row_dims") or {}).items()},
                units={int(layer): list(ids) for layer, ids in (spec.get("units") or {}).items()},
                units_per_layer=int(spec.get("units_per_layer", 0)),
                n_layers=int(spec.get("n_layers", 0)),
                scope=str(spec.get("scope", "per_layer")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"not a pruning plan ({type(err).__name__}: {err}); save it with plan.save") from None

    def save(self, directory: str | Path, model: HookedModel) -> Path:
        """An artifact folder (kind "pruning_plan": JSON spec + masks in safetensors, fingerprinted to `model`)."""
        from interpsuite.artifacts import ModelFingerprint, save_artifact

        return save_artifact(directory, ARTIFACT_KIND, dict(self.masks), self.to_json(), ModelFingerprint.of(model))

    @classmethod
    def load(cls, directory: str | Path, model: HookedModel | None = None) -> PruningPlan:
        """Read a saved plan; with `model`, refuse one made on another model."""
        from interpsuite.artifacts import load_artifact

        artifact = load_artifact(directory, ARTIFACT_KIND, "pruning plan")
        if model is not None:
            artifact.check_model(model, "pruning plan")
        return cls.from_json(artifact.spec, artifact.tensors)


# --- making plans from scores --------------------------------------------------------------


def _prune_count(sparsity: float, n: int) -> int:
    return min(n, int(round(sparsity * n)))


def _lowest_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 1-D or row-wise 2-D score tensor pruning exactly `k` lowest per row (last dim)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        index = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices
        keep.scatter_(-1, index, False)
    return keep


def _check_scores(name: Any, scores: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise ConfigError(f"the scores of {name} are a {type(scores).__name__}, not a tensor")
    if tuple(scores.shape) != shape:
        raise ConfigError(f"the scores of {name} have shape {tuple(scores.shape)}; they must match {shape}")
    if not torch.isfinite(scores).all():
        raise ConfigError(f"the scores of {name} contain NaN or inf; fix the criterion that made them")
    return scores.detach()


def _unstructured(model: HookedModel, scores: dict[str, torch.Tensor], sparsity: float, scope: str):
    from .masks import out_dim

    hf = model.hf_model
    parameters = dict(hf.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    row_dims: dict[str, int] = {}
    checked: dict[str, torch.Tensor] = {}
    for name, score in scores.items():
        if name not in parameters:
            raise ConfigError(f"scores name {name!r}, which {model.info.name} has no parameter called")
        checked[name] = _check_scores(name, score, tuple(parameters[name].shape))
        module = hf.get_submodule(name.rpartition(".")[0])
        row_dims[name] = out_dim(module) if checked[name].dim() == 2 else 0
    if scope == "global":
        flat = torch.cat([s.reshape(-1).to(torch.float32).cpu() for s in checked.values()])
        keep = _lowest_mask(flat, _prune_count(sparsity, flat.numel()))
        start = 0
        for name, score in checked.items():
            masks[name] = keep[start : start + score.numel()].reshape(score.shape).to(score.device, copy=True)
            start += score.numel()
        return masks, row_dims
    for name, score in checked.items():
        if scope == "per_layer" or score.dim() != 2:
            masks[name] = _lowest_mask(score.reshape(-1), _prune_count(sparsity, score.numel())).reshape(score.shape)
        else:  # per output row: rows are the last dim after moving the output dim first
            rows = score.movedim(row_dims[name], 0)
            keep = _lowest_mask(rows, _prune_count(sparsity, rows.shape[1]))
            masks[name] = keep.movedim(0, row_dims[name]).contiguous()
    return masks, row_dims


def _structured(model: HookedModel, scores: dict[int, torch.Tensor], sparsity: float, scope: str, n: int):
    n_layers = model.info.n_layers
    checked: dict[int, torch.Tensor] = {}
    for layer, score in scores.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ConfigError(f"scores for layer {layer!r}: {model.info.name} has layers 0..{n_layers - 1}")
        checked[layer] = _check_scores(f"layer {layer}", score, (n,))
    units: dict[int, list[int]] = {}
    if scope == "global":
        layers = sorted(checked)
        flat = torch.cat([checked[layer].to(torch.float32).cpu() for layer in layers]) if layers else torch.empty(0)
        keep = _lowest_mask(flat, _prune_count(sparsity, flat.numel()))
        for i, layer in enumerate(layers):
            units[layer] = (~keep[i * n : (i + 1) * n]).nonzero().flatten().tolist()
        return units
    for layer, score in sorted(checked.items()):
        keep = _lowest_mask(score.to(torch.float32), _prune_count(sparsity, n))
        units[layer] = (~keep).nonzero().flatten().cpu().tolist()
    return units


def plan_from_scores(
    model: HookedModel,
    scores: dict,
    sparsity: float,
    granularity: Granularity,
    criterion: str,
    scope: Scope | None = None,
) -> PruningPlan:
    """Prune the lowest-scoring entries (higher score = more important).

    unstructured: `scores` {param name: tensor shaped like the weight}; scope "per_row" (default:
    round(sparsity x row length) per output row), "per_layer" (per weight) or "global".
    neurons / heads: `scores` {layer: tensor[d_mlp or n_heads]}; scope "per_layer" (default: the
    same count round(sparsity x N) in every scored layer, so export can shrink the model
    uniformly) or "global" (lowest across all scored layers). Layers without scores are kept.
    """
    sparsity = check_sparsity(sparsity)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    structured = granularity != "unstructured"
    scope = scope or ("per_layer" if structured else "per_row")
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if structured and scope == "per_row":
        raise ConfigError(f"scope 'per_row' is for unstructured pruning; use 'per_layer' or 'global' for {granularity}")
    if not isinstance(scores, dict) or not scores:
        raise ConfigError(f"no scores given for {granularity} pruning by {criterion}; compute the criterion first")
    info = model.info
    if not structured:
        masks, row_dims = _unstructured(model, scores, sparsity, scope)
        return PruningPlan(granularity, criterion, sparsity, masks=masks, row_dims=row_dims, scope=scope)
    n = info.d_mlp if granularity == "neurons" else info.n_heads
    units = _structured(model, scores, sparsity, scope, n)
    return PruningPlan(
        granularity, criterion, sparsity, units=units, units_per_layer=n, n_layers=info.n_layers, scope=scope
    )
