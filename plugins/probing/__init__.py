"""Probing family (issue 11): what information a layer holds, and how layers and models relate.

The engines come first and are plain Python APIs: `similarity` (CKA in its biased and
debiased forms, RBF CKA, RSA) and `probes` (per-layer linear probes with control tasks).
The analyzers (`linear_probe`, `concept_direction`, `bias_probe`,
`representation_similarity`, `cross_lingual`) are thin layers over them and register
through the `interpsuite` entry point like every other family.
"""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers

MODULES: tuple[str, ...] = ("representation", "linear_probe", "concept_direction", "bias_probe", "cross_lingual")


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)
