"""`concept_direction`: a concept's direction per layer by three methods, saved for `steering`.

One capture pass over a labelled set (shipped task or a user's file, as in `linear_probe`)
gives every layer; `concepts` estimates difference-of-means, LDA and probe-weight directions;
the analyzer compares them (cosine between methods per layer, cosine across layers), draws
the projections of each class on the best layer, and writes every direction as a file in the
`interpsuite.directions` format (safetensors, tensor `direction`, metadata hook/model/method/
layer/task) with one JSON sidecar indexing them:

    <run dir>/data/concept_direction/<task>/<method>/layer<L>.safetensors
    <run dir>/data/concept_direction/<task>/directions.json

`python -m interpsuite +analyzer=steering analyzers.steering.direction_path=<that file>` then
adds it (the file's `hook` picks the layer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.directions import read_direction, write_direction
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .concepts import (
    METHODS,
    binary_mask,
    cosine,
    diff_of_means,
    lda_direction,
    projection_gap,
    scaled_to_separation,
)
from .linear_probe import LinearProbeConfig, capture_task, check_probe_config, load_sets
from .probes import ProbeConfig, probe_layers

#: per-block sites whose activation is [batch, pos, d_model], where steering can add a direction
STEERABLE_SITES = ("resid_pre", "resid_post", "resid_mid", "attn.out", "mlp.out")


@dataclass
class ConceptDirectionConfig:
    task: str | None = "sentiment"  # a shipped task (null with path = your file)
    path: str | None = None  # your .jsonl/.csv labelled set
    level: str = "sequence"  # of `path`: sequence | token
    text_field: str = "text"
    label_field: str = "label"
    words_field: str = "words"
    tags_field: str = "tags"
    positive: str | None = None  # the concept's class; null = the second class in sorted order (binary sets)
    hook_point: str = "resid_post"
    layers: list[int] | None = None  # null = every layer
    pooling: str = "mean"  # sequence sets: mean | last
    token_alignment: str = "mean"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])  # probe-weight direction: mean over seeds
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    max_texts: int | None = None
    save: bool = True  # write the direction files


def _probe_cfg(cfg: ConceptDirectionConfig) -> LinearProbeConfig:
    """The same set and capture options in linear_probe's terms (one loader and checker for both)."""
    return LinearProbeConfig(
        tasks=[cfg.task] if cfg.task else [],
        path=cfg.path,
        level=cfg.level,
        text_field=cfg.text_field,
        label_field=cfg.label_field,
        words_field=cfg.words_field,
        tags_field=cfg.tags_field,
        hook_points=[cfg.hook_point],
        layers=cfg.layers,
        pooling=cfg.pooling,
        token_alignment=cfg.token_alignment,
        seeds=list(cfg.seeds),
        c_grid=list(cfg.c_grid),
        control=False,
        max_texts=cfg.max_texts,
    )


class ConceptDirection(Analyzer):
    name = "concept_direction"
    family = "probing"
    description = "concept directions per layer (difference of means, LDA, probe weights), saved for steering"
    Config = ConceptDirectionConfig

    def validate(self, info: ModelInfo, cfg: ConceptDirectionConfig) -> ConceptDirectionConfig:
        if cfg.task and cfg.path:
            raise ConfigError(f"{self.name}: give task or path, not both (set task=null to use your file)")
        if not cfg.methods or any(m not in METHODS for m in cfg.methods):
            raise ConfigError(f"{self.name}.methods: {cfg.methods!r}; choose from {', '.join(METHODS)}")
        if cfg.hook_point not in STEERABLE_SITES:
            raise ConfigError(
                f"{self.name}.hook_point: {cfg.hook_point!r}; a direction lives in a d_model site: "
                f"{', '.join(STEERABLE_SITES)}"
            )
        layers = check_probe_config(info, _probe_cfg(cfg), self.name)
        (labelled,) = load_sets(_probe_cfg(cfg), self.name)
        self._positive(labelled.classes, cfg)
        return ConceptDirectionConfig(**{**cfg.__dict__, "layers": layers})

    def _positive(self, classes: list[str], cfg: ConceptDirectionConfig) -> str:
        if cfg.positive is not None:
            if cfg.positive not in classes:
                raise ConfigError(f"{self.name}.positive: {cfg.positive!r} is not a label; labels: {classes}")
            return cfg.positive
        if len(classes) != 2:
            raise ConfigError(
                f"{self.name}: the set has {len(classes)} classes {classes}; set positive=<label> "
                f"(that label against the rest)"
            )
        return classes[1]

    def estimate(self, info: ModelInfo, cfg: ConceptDirectionConfig, workload):
        """One capture pass over the labelled set (every layer), the probe-weight direction (batched
        probes over layers x C values x seeds) and the cheap directions; the direction files."""
        from interpsuite.estimate_analyzers import probe_fit_macs

        (labelled,) = load_sets(_probe_cfg(cfg), self.name)
        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        names = [f"blocks.{L}.{cfg.hook_point}" for L in layers]
        n, d = len(labelled.example_labels()), workload.width_of(names[0])
        cost = workload.forward_texts(labelled.texts, logits=1, capture=names).hold(4 * n * d * len(names) * 3)
        if "probe" in cfg.methods:
            problems = len(layers) * len(cfg.c_grid) * len(cfg.seeds)
            cost = cost + workload.macs(probe_fit_macs(problems, n, d, len(labelled.classes)))
        cost = cost + workload.macs(len(layers) * (n * d * d + len(layers) * d))  # PCA-like directions, cosines
        files = workload.disk(len(cfg.methods) * len(layers) * (4 * d + 600)) if cfg.save else workload.disk(0)
        return cost + files + workload.figures(3, 3)

    def run(self, ctx: RunContext) -> Result:
        cfg: ConceptDirectionConfig = self.cfg
        info = ctx.model.info
        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        (labelled,) = load_sets(_probe_cfg(cfg), self.name)
        positive = self._positive(labelled.classes, cfg)
        task = capture_task(
            ctx.model, labelled, [cfg.hook_point], layers, pooling=cfg.pooling, alignment=cfg.token_alignment,
            batch_size=ctx.batch_size, max_length=ctx.max_length, progress=ctx.progress,
        )  # fmt: skip
        mask = binary_mask(task.labels, positive)
        directions: dict[str, dict[int, np.ndarray]] = {m: {} for m in cfg.methods}
        gaps: dict[str, dict[int, float]] = {m: {} for m in cfg.methods}
        accuracy: dict[int, float] = {}
        if "probe" in cfg.methods:
            report = probe_layers(
                {layer: task.features[(cfg.hook_point, layer)] for layer in layers},
                mask.astype(int).tolist(),
                task.groups,
                config=ProbeConfig(seeds=tuple(cfg.seeds), c_grid=tuple(cfg.c_grid)),
            )
            for lp in report.layers:
                accuracy[lp.layer] = lp.accuracy_mean
        for layer in layers:
            x = task.features[(cfg.hook_point, layer)].double().numpy()
            separation = diff_of_means(x, mask)
            raw = {"diff_means": separation}
            if "lda" in cfg.methods:
                raw["lda"] = lda_direction(x, mask)
            if "probe" in cfg.methods:
                raw["probe"] = report.layer(layer).direction
            for method in cfg.methods:
                directions[method][layer] = scaled_to_separation(raw[method], separation)
                gaps[method][layer] = projection_gap(x, mask, directions[method][layer])

        result = Result()
        result.tables["directions"] = self._direction_table(directions, gaps, accuracy, layers)
        result.tables["method_agreement"] = self._agreement(directions, layers)
        main = cfg.methods[0]
        cross = [
            {"layer_a": a, "layer_b": b, "cosine": cosine(directions[main][a], directions[main][b])}
            for a in layers
            for b in layers
        ]
        result.tables["layer_cosine"] = pd.DataFrame(cross)
        best = max(layers, key=lambda layer: accuracy.get(layer, gaps[main][layer]))
        result.tables["projections"] = self._projections(task, mask, directions, best, positive)
        self._figures(result, ctx, labelled.name, main, best, positive)
        result.add_check(
            "direction_sign_min_gap",
            min(gaps[m][layer] for m in cfg.methods for layer in layers),
            0.0,
            mode="min",
        )
        result.metrics["best_layer"] = float(best)
        for method in cfg.methods:
            result.metrics[f"{method}.gap_at_best"] = gaps[method][best]
        if accuracy:
            result.metrics["probe_accuracy_at_best"] = accuracy[best]
        files = {}
        if cfg.save:
            files = self._save(ctx, result, labelled.name, directions, gaps, accuracy, best, positive)
        result.summary = {
            "task": labelled.name,
            "positive": positive,
            "hook_point": cfg.hook_point,
            "layers": layers,
            "methods": list(cfg.methods),
            "best_layer": best,
            "n_examples": int(mask.size),
            "files": files,
        }
        return result

    @staticmethod
    def _direction_table(directions, gaps, accuracy, layers) -> pd.DataFrame:
        rows = []
        for method, per_layer in directions.items():
            for layer in layers:
                rows.append(
                    {
                        "method": method,
                        "layer": layer,
                        "norm": float(np.linalg.norm(per_layer[layer])),
                        "projection_gap_std": gaps[method][layer],
                        "probe_accuracy": accuracy.get(layer),
                    }
                )
        return pd.DataFrame(rows)

    @staticmethod
    def _agreement(directions, layers) -> pd.DataFrame:
        methods = list(directions)
        rows = []
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                for layer in layers:
                    rows.append(
                        {
                            "layer": layer,
                            "pair": f"{a} vs {b}",
                            "cosine": cosine(directions[a][layer], directions[b][layer]),
                        }
                    )
        return pd.DataFrame(rows, columns=["layer", "pair", "cosine"])

    def _projections(self, task, mask, directions, best, positive) -> pd.DataFrame:
        x = task.features[(self.cfg.hook_point, best)].double().numpy()
        rows = []
        for method, per_layer in directions.items():
            unit = per_layer[best] / (np.linalg.norm(per_layer[best]) or 1.0)
            for value, is_positive in zip(x @ unit, mask, strict=True):
                rows.append({"method": method, "layer": best, "class": positive if is_positive else "other",
                             "projection": float(value)})  # fmt: skip
        return pd.DataFrame(rows)

    def _figures(self, result: Result, ctx: RunContext, task: str, main: str, best: int, positive: str) -> None:
        from .plots import plot_method_agreement, plot_projection_histograms, plot_similarity

        name = ctx.model.info.name
        if not result.tables["method_agreement"].empty:
            result.add_figure(
                "method_agreement",
                plot_method_agreement,
                result.tables["method_agreement"],
                f"{name}: {task} directions, cosine between methods",
                ctx.style,
            )
        result.add_figure(
            "layer_cosine", plot_similarity, result.tables["layer_cosine"], "cosine", "layer_a", "layer_b",
            f"{name}: {task} {main} direction, cosine across layers", ctx.style,
        )  # fmt: skip
        result.add_figure(
            "projections",
            plot_projection_histograms,
            result.tables["projections"],
            f"{name} layer {best}: projections on the {task} direction ({positive})",
            ctx.style,
        )

    def _save(self, ctx, result, task, directions, gaps, accuracy, best, positive) -> dict:
        cfg: ConceptDirectionConfig = self.cfg
        root = ctx.data_dir(self.name) / task
        index = {"task": task, "positive": positive, "model": ctx.model.info.name, "hook_point": cfg.hook_point,
                 "best_layer": best, "directions": []}  # fmt: skip
        round_trip = 0.0
        files = {}
        for method, per_layer in directions.items():
            (root / method).mkdir(parents=True, exist_ok=True)
            for layer, vector in per_layer.items():
                hook = f"blocks.{layer}.{cfg.hook_point}"
                path = root / method / f"layer{layer}.safetensors"
                tensor = torch.from_numpy(vector).float()
                write_direction(path, tensor, hook, model=ctx.model.info.name, method=method, task=task,
                                positive=positive, layer=str(layer))  # fmt: skip
                index["directions"].append(
                    {"method": method, "layer": layer, "hook": hook, "file": str(path.relative_to(root)),
                     "norm": float(np.linalg.norm(vector)), "projection_gap_std": gaps[method][layer],
                     "probe_accuracy": accuracy.get(layer)}
                )  # fmt: skip
                if layer == best:
                    files[method] = str(path)
                    again, _ = read_direction(path)
                    round_trip = max(round_trip, float((again - tensor).abs().max()))
        (root / "directions.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        files["index"] = str(root / "directions.json")
        result.add_check("saved_round_trip_error", round_trip, 0.0)
        return files


ANALYZERS = [ConceptDirection]
