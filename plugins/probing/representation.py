"""`representation_similarity`: how a model's layers (and other models' layers) relate.

One capture pass collects every chosen layer's representations of the run's texts; the
similarity engine (`similarity.py`) then compares all layer pairs with linear CKA (debiased
by default: the biased form drifts towards 1 when features outnumber examples), RSA and,
optionally, RBF CKA. Examples are tokens (every real token; padding never counts) or texts
(mean over a text's tokens, or its last token). Other models (`models: [...]`) are loaded in
turn and compared layer by layer on the same texts; different tokenizers do not produce the
same tokens, so across models the examples must be texts (pooling mean or last), which is
the alignment rule: one example per text, whatever each tokenizer made of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, ModelInfo, describe_model
from interpsuite.results import Result

from .capture import POOLINGS, check_block_site, hook_names, pooled_features
from .similarity import cka_matrix, linear_cka, linear_cka_gram, rbf_cka, rsa

#: examples for the Gram-based reference check of the fast CKA path (O(n^2) memory)
REFERENCE_EXAMPLES = 512


@dataclass
class RepresentationSimilarityConfig:
    hook_point: str = "resid_post"  # per-block site compared across layers
    layers: list[int] | None = None  # null = every layer
    pooling: str = "tokens"  # tokens (every real token) | mean | last (one example per text)
    debiased: bool = True  # unbiased-HSIC CKA; false = Kornblith et al.'s biased form
    rsa: bool = True  # also RSA (Spearman between correlation-distance RDMs)
    rbf: bool = False  # also RBF CKA (O(n^2): on at most max_rsa_examples examples)
    max_examples: int = 8000  # token examples kept (uniform sample under the run's seed)
    max_rsa_examples: int = 1000  # RSA/RBF build n x n matrices: examples they use
    models: list[str] = field(default_factory=list)  # other models compared layer by layer (pooling mean/last)


def _check_config(info: ModelInfo, cfg: RepresentationSimilarityConfig, name: str) -> list[int]:
    if cfg.pooling not in POOLINGS:
        raise ConfigError(f"{name}.pooling: {cfg.pooling!r} is not one of {', '.join(POOLINGS)}")
    check_block_site(info, cfg.hook_point, f"{name}.hook_point")
    if cfg.max_examples < 4 or cfg.max_rsa_examples < 4:
        raise ConfigError(f"{name}: max_examples and max_rsa_examples must be >= 4 (CKA needs 4 examples)")
    if cfg.models and cfg.pooling == "tokens":
        raise ConfigError(
            f"{name}: comparing models needs pooling: mean or last (their tokenizers split texts differently; "
            f"one example per text is the alignment)"
        )
    return check_layers(info, cfg.layers, f"{name}.layers")


class RepresentationSimilarity(Analyzer):
    name = "representation_similarity"
    family = "probing"
    description = "layer x layer (and model x model) linear CKA, RSA and RBF CKA of the representations"
    Config = RepresentationSimilarityConfig

    def validate(self, info: ModelInfo, cfg: RepresentationSimilarityConfig) -> RepresentationSimilarityConfig:
        layers = _check_config(info, cfg, self.name)
        for other in cfg.models:  # names are checked before any weights load
            other_info = describe_model(other)
            if cfg.hook_point not in other_info.block_sites():
                raise ConfigError(f"{self.name}.models: {other} has no per-block site {cfg.hook_point!r}")
        return RepresentationSimilarityConfig(**{**cfg.__dict__, "layers": layers})

    def estimate(self, info: ModelInfo, cfg: RepresentationSimilarityConfig, workload):
        """One capture pass over the inputs (every chosen layer); linear CKA of every pair of layers on
        up to max_examples examples; RSA and RBF CKA (n^2 and n^3) on up to max_rsa_examples."""
        from interpsuite.estimate_analyzers import cka_matrix_macs, rbf_cka_macs, rsa_macs

        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        names = hook_names(layers, cfg.hook_point)
        examples = workload.tokens if cfg.pooling == "tokens" else len(workload.lengths)
        n, d = min(examples, cfg.max_examples), workload.width_of(names[0])
        small = min(n, cfg.max_rsa_examples)
        cost = workload.forward_inputs(logits=1, capture=names).hold(4 * examples * d * len(layers) * 2)
        arithmetic = cka_matrix_macs(len(layers), n, d)
        if cfg.rsa:
            arithmetic += rsa_macs(len(layers), small, d)
        if cfg.rbf:
            arithmetic += rbf_cka_macs(len(layers), small, d)
            cost = cost.hold(8 * 6 * small * small)
        cost = cost + workload.macs(arithmetic)
        if cfg.models:
            cost = cost.note(f"also loads and runs {', '.join(cfg.models)}: their time is not included")
        return cost + workload.figures(1 + int(cfg.rsa) + len(cfg.models)) + workload.table(len(layers) ** 2, 5)

    def run(self, ctx: RunContext) -> Result:
        cfg: RepresentationSimilarityConfig = self.cfg
        layers = cfg.layers if cfg.layers is not None else list(range(ctx.model.info.n_layers))
        own = collect(ctx, ctx.model, layers, cfg)
        own = subsample(own, cfg.max_examples, ctx.seed)
        result = Result()
        matrix = cka_matrix(own, debiased=cfg.debiased)
        rows = [
            {"layer_a": a, "layer_b": b, "cka": float(matrix[i, j])}
            for i, a in enumerate(layers)
            for j, b in enumerate(layers)
        ]
        table = pd.DataFrame(rows)
        small = subsample(own, cfg.max_rsa_examples, ctx.seed)
        if cfg.rsa:
            table["rsa"] = [rsa(small[i], small[j]) for i in range(len(layers)) for j in range(len(layers))]
        if cfg.rbf:
            table["rbf_cka"] = [
                rbf_cka(small[i], small[j], debiased=cfg.debiased)
                for i in range(len(layers))
                for j in range(len(layers))
            ]
        result.tables["layer_similarity"] = table
        self._checks(result, matrix, small, cfg)
        n = int(own[0].shape[0])
        result.metrics["n_examples"] = float(n)
        if len(layers) > 1:
            adjacent = [float(matrix[i, i + 1]) for i in range(len(layers) - 1)]
            result.metrics["cka_adjacent_mean"] = sum(adjacent) / len(adjacent)
            result.metrics["cka_first_last"] = float(matrix[0, -1])
        from .plots import plot_similarity

        what = "debiased linear CKA" if cfg.debiased else "linear CKA"
        title = f"{ctx.model.info.name} {cfg.hook_point}: {what} ({n} {cfg.pooling} examples)"
        result.add_figure("layer_cka", plot_similarity, table, "cka", "layer_a", "layer_b", title, ctx.style)
        if cfg.rsa:
            rsa_title = f"{ctx.model.info.name} {cfg.hook_point}: RSA ({int(small[0].shape[0])} examples)"
            result.add_figure("layer_rsa", plot_similarity, table, "rsa", "layer_a", "layer_b", rsa_title, ctx.style)
        if cfg.models:
            cross = self._compare_models(ctx, layers, own, cfg)
            result.tables["model_similarity"] = cross
            for other, frame in cross.groupby("model_b"):
                result.add_figure(
                    f"cka_vs_{other}",
                    plot_similarity,
                    frame,
                    "cka",
                    "layer_a",
                    "layer_b",
                    f"{ctx.model.info.name} vs {other}: {what}",
                    ctx.style,
                )
        result.summary = {
            "layers": layers,
            "hook_point": cfg.hook_point,
            "pooling": cfg.pooling,
            "debiased": cfg.debiased,
            "n_examples": n,
            "models": list(cfg.models),
        }
        return result

    @staticmethod
    def _checks(result: Result, matrix: torch.Tensor, small: list[torch.Tensor], cfg) -> None:
        diagonal = torch.diagonal(matrix)
        result.add_check("self_similarity_error", float((diagonal - 1).abs().max()), 1e-9)
        result.add_check("symmetry_error", float((matrix - matrix.T).abs().max()), 1e-12)
        # the feature-space formula (no n x n matrix) against the Gram-matrix reference
        count = min(REFERENCE_EXAMPLES, int(small[0].shape[0]))
        a, b = small[0][:count], small[-1][:count]
        fast = linear_cka(a, b, debiased=cfg.debiased)
        reference = linear_cka_gram(a, b, debiased=cfg.debiased)
        result.add_check("feature_space_vs_gram_error", abs(fast - reference), 1e-8)

    def _compare_models(self, ctx: RunContext, layers: list[int], own: list[torch.Tensor], cfg) -> pd.DataFrame:
        from interpsuite.models import load_model

        rows = []
        for other_name in cfg.models:
            other = load_model(other_name, device=str(ctx.model.device), seed=ctx.seed)
            try:
                other_layers = list(range(other.info.n_layers))
                theirs = collect(ctx, other, other_layers, cfg)
            finally:
                other.close()
            if theirs[0].shape[0] != own[0].shape[0]:
                raise ConfigError(
                    f"{self.name}: {other_name} gave {theirs[0].shape[0]} examples, {ctx.model.info.name} "
                    f"{own[0].shape[0]}; compare models on the same texts with pooling mean or last"
                )
            matrix = cka_matrix(own, theirs, debiased=cfg.debiased)
            for i, a in enumerate(layers):
                for j, b in enumerate(other_layers):
                    rows.append({"model_b": other_name, "layer_a": a, "layer_b": b, "cka": float(matrix[i, j])})
        return pd.DataFrame(rows)


def collect(ctx: RunContext, model: HookedModel, layers: list[int], cfg) -> list[torch.Tensor]:
    """Every layer's examples from ONE capture pass per batch: [n, d] float32 on the CPU."""
    examples, _ = pooled_features(
        model,
        ctx.inputs.texts,
        hook_names(layers, cfg.hook_point),
        cfg.pooling,
        batch_size=ctx.batch_size,
        max_length=ctx.max_length,
        progress=ctx.progress,
        desc="representation_similarity",
    )
    if examples[0].shape[0] < 4:
        raise ConfigError(
            f"representation_similarity: {examples[0].shape[0]} examples; CKA needs at least 4 "
            f"(give more texts, or pooling: tokens)"
        )
    return examples


def subsample(examples: list[torch.Tensor], limit: int, seed: int) -> list[torch.Tensor]:
    """The same uniform sample of rows from every layer (reproducible under the run's seed)."""
    n = int(examples[0].shape[0])
    if n <= limit:
        return examples
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(n, generator=generator)[:limit].sort().values
    return [x[keep] for x in examples]


ANALYZERS = [RepresentationSimilarity]
