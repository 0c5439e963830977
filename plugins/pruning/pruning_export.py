"""`pruning_export`: write a pruned model as a standard Hugging Face folder, and prove it is the same model.

A thin analyzer over `criteria.prune` and `export.export_pruned`: one plan (criterion, sparsity,
granularity, from calibration text) is written to `path` (default <run>/data/pruning_export/model).
Structured pruning removes neurons and heads physically where the architecture's config can say
so (the same count in every layer; Llama-family heads only when every KV group loses the same
number); otherwise the zeros are stored and the summary says why. The folder reloads with
`transformers` alone; the check `export_max_abs_logit_diff` compares its logits with the
in-memory masked model's (<= 1e-5). The plan itself is saved next to it (safetensors + JSON).

An existing `path` is refused before any weights load unless `overwrite: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .pruning_impact import CALIBRATION_SOURCES, GRANULARITIES, calibration_texts


@dataclass
class PruningExportConfig:
    criterion: str = "magnitude"  # unstructured: magnitude | wanda; neurons: activation | taylor | ablation; heads
    granularity: str = "unstructured"  # unstructured | neurons | heads
    sparsity: float = 0.5
    scope: str | None = None  # null = per_row (unstructured) / per_layer (structured: physical removal)
    path: str | None = None  # the folder to write; null = <run>/data/pruning_export/model
    overwrite: bool = False  # replace an existing folder at `path`
    calibration: str = "python_docs"  # python_docs | lens_corpus | inputs (data-aware criteria)
    calibration_texts: int = 32


class PruningExport(Analyzer):
    name = "pruning_export"
    family = "pruning"
    description = "write a pruned model as a Hugging Face folder (units removed where possible), reload check"
    Config = PruningExportConfig

    def validate(self, info: ModelInfo, cfg: PruningExportConfig) -> None:
        from .criteria import CRITERIA, NEEDS_LOSS
        from .plan import check_sparsity

        what = self.name
        if cfg.granularity not in GRANULARITIES:
            raise ConfigError(f"{what}.granularity: {cfg.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if cfg.criterion not in CRITERIA[cfg.granularity]:
            valid = ", ".join(CRITERIA[cfg.granularity])
            raise ConfigError(f"{what}.criterion: {cfg.criterion!r} does not rank {cfg.granularity}; choose {valid}")
        if cfg.criterion in NEEDS_LOSS and not info.is_causal:
            raise ConfigError(f"{what}.criterion: {cfg.criterion} needs a causal LM's loss; {info.name} is an encoder")
        try:
            check_sparsity(cfg.sparsity)
        except ConfigError as err:
            raise ConfigError(f"{what}.sparsity: {err}") from None
        if cfg.calibration not in CALIBRATION_SOURCES:
            raise ConfigError(f"{what}.calibration: {cfg.calibration!r}; choose from {', '.join(CALIBRATION_SOURCES)}")
        if cfg.path is not None and Path(cfg.path).expanduser().exists() and not cfg.overwrite:
            raise ConfigError(
                f"{what}.path: {cfg.path} already exists; choose a new path or set {what}.overwrite=true"
            )

    def estimate(self, info: ModelInfo, cfg: PruningExportConfig, workload):
        """The criterion's scores, the pruned model written twice (staged, then final) and reloaded
        once (a second copy of the weights in memory) to compare its logits with the pruned model's."""
        from interpsuite.estimate_analyzers import importance_cost
        from interpsuite.estimate_model import model_params

        texts = calibration_texts(cfg.calibration, workload.texts, cfg.calibration_texts)
        lengths = workload.token_lengths(texts)
        layers = None
        if cfg.criterion == "ablation":
            per_layer = info.d_mlp if cfg.granularity == "neurons" else info.n_heads
            layers = [layer for layer in range(info.n_layers) for _ in range(per_layer)]
        cost = importance_cost(workload, cfg.criterion, cfg.granularity, lengths, layers)
        weights = model_params(info) * workload.dtype_bytes
        check = workload.forward_batches(workload.first(workload.batch_size)).times(2)
        return cost + check.hold(weights) + workload.disk(weights)

    def run(self, ctx: RunContext) -> Result:
        from .criteria import prune

        cfg: PruningExportConfig = self.cfg
        model = ctx.model
        texts = calibration_texts(cfg.calibration, ctx.inputs.texts, cfg.calibration_texts)
        plan = prune(model, cfg.criterion, cfg.sparsity, cfg.granularity, texts, scope=cfg.scope,
                     batch_size=ctx.batch_size, max_length=ctx.max_length)  # fmt: skip
        data = ctx.data_dir(self.name)
        path = Path(cfg.path).expanduser() if cfg.path else data / "model"
        report = plan.export(model, path, overwrite=cfg.overwrite)
        plan.save(data / "plan", model)
        result = Result()
        result.add_check("export_max_abs_logit_diff", report.max_abs_logit_diff, report.tolerance)
        if cfg.granularity == "unstructured":
            result.add_check("achieved_sparsity_row_error_elements", max(plan.row_errors().values(), default=0.0), 1.0)
        result.metrics.update(
            {
                "overall_sparsity": report.overall_sparsity,
                "parameters_before": float(report.parameters_before),
                "parameters_after": float(report.parameters_after),
                "physical": float(report.physical),
            }
        )
        result.summary = {
            "path": str(Path(report.path).resolve()),
            "plan": str((data / "plan").resolve()),
            "criterion": cfg.criterion,
            "granularity": cfg.granularity,
            "physical": report.physical,
            "config_changes": report.config_changes,
            "notes": report.notes,
            "load_with": f"transformers.AutoModelForCausalLM.from_pretrained({str(Path(report.path).resolve())!r})",
        }
        return result


ANALYZERS = [PruningExport]
