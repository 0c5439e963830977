"""Pruning analysis (family `pruning`, issue 15): weights, importance scores, masks, impact, export.

Engines first (the server's NeuronScope endpoints and scripts call them without the pipeline):
- `weights`: weight statistics and spectra per linear module;
- `calibration`: Wanda's input-feature norms, magnitude and Wanda scores;
- `criteria`: importance scores at three granularities (magnitude, Wanda; neuron activation,
  Taylor, ablation; head Taylor, ablation) and `prune(model, criterion, sparsity, granularity)`;
- `plan` / `masks`: a `PruningPlan` applied in place and restored exactly, never a copy of the model;
- `impact`: perplexity, IOI and factual recall of many plans with bootstrap intervals (structured
  plans share one sweep);
- `export`: a standard Hugging Face folder, structured pruning removed physically where the
  architecture allows.

The analyzers are thin layers over these. Names are loaded on first use: importing the package
does not import torch.
"""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers, lazy_exports

MODULES: tuple[str, ...] = ("weight_analysis", "pruning_candidates", "pruning_impact", "pruning_export")

_EXPORTS = {
    "KINDS": "weights",
    "LinearModule": "weights",
    "WeightMatrix": "weights",
    "linear_modules": "weights",
    "weight_matrices": "weights",
    "analyze_weights": "weights",
    "WeightAnalysis": "weights",
    "matrix_stats": "weights",
    "MatrixStats": "weights",
    "effective_rank": "weights",
    "power_iteration_norm": "weights",
    "input_feature_norms": "calibration",
    "wanda_scores": "calibration",
    "magnitude_scores": "calibration",
    "PruningPlan": "plan",
    "SparsityReport": "plan",
    "plan_from_scores": "plan",
    "check_sparsity": "plan",
    "GRANULARITIES": "plan",
    "SCOPES": "plan",
    "masked": "masks",
    "active_plan": "masks",
    "export_pruned": "export",
    "ExportReport": "export",
    "removal_plan": "export",
    "importance_scores": "criteria",
    "prune": "criteria",
    "Scores": "criteria",
    "CRITERIA": "criteria",
    "evaluate_plans": "impact",
    "ImpactResult": "impact",
    "plan_interventions": "impact",
}

__all__ = sorted([*_EXPORTS, "MODULES"])


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
