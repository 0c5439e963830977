"""The `mechanistic` analyzer family (built-in plugin, registered via the entry-point group).

Causal claims about components: lenses, patching, tracing, ablation, circuits, steering. Every
sweep runs through `HookedModel.sweep` (many interventions per forward pass).
"""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers

MODULES: tuple[str, ...] = (
    "patching",
    "attribution_patching",
    "circuit",
    "head_ablation",
    "steering",
    "lens",
    "tuned_lens",
    "causal_tracing",
    "dla",
)


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)
