"""`bias_probe`: a definitional direction, target projections and WEAT effect sizes, per layer.

What it measures, and nothing more: (1) a direction from definitional word pairs (he/she,
man/woman, ... shipped in data/bias, or your own `pairs`), Bolukbasi et al. 2016, with the
share of the pairs' variance that lies along it; (2) the scalar projection of each target word
(shipped occupations, or your own `targets`) onto that direction; (3) WEAT association effect
sizes with one-sided permutation p-values (Caliskan et al. 2017) on the same representations.
The numbers describe the model's geometry; reading them as evidence about people, or as good
or bad, is outside what they measure. The engine (`bias.py`) holds the formulas.

Representations are contextual: each word is put in every template (`{}` is the slot; the
text is the template's words and the word joined by single spaces), its sub-tokens are pooled
by `alignment` (mean | first | last, as `capture.word_features`), and the result is averaged
over templates. Every word x template x layer comes from ONE batched capture pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

from .bias import (
    DIRECTION_METHODS,
    definitional_direction,
    pair_margins,
    project,
    weat_effect_size,
    weat_permutation_test,
)
from .capture import ALIGNMENTS, check_block_site, hook_names, word_features

BIAS_DIR = Path(__file__).parent / "data" / "bias"
WEAT_SETS = ("X", "Y", "A", "B")
MIN_PERMUTATIONS = 100


def _load(name: str) -> dict:
    with open(BIAS_DIR / name, encoding="utf-8") as handle:
        return json.load(handle)


def shipped_pairs() -> list[list[str]]:
    return [list(pair) for pair in _load("definitional_pairs.json")["pairs"]]


def shipped_targets() -> list[str]:
    return list(_load("occupations.json")["words"])


def shipped_templates() -> list[str]:
    return list(_load("templates.json")["templates"])


def shipped_weat() -> dict[str, dict]:
    return dict(_load("weat.json")["tests"])


@dataclass
class BiasProbeConfig:
    hook_point: str = "resid_post"  # per-block site read at every layer
    layers: list[int] | None = None  # null = every layer
    pairs: list[list[str]] | None = None  # definitional [a, b] word pairs; null = shipped (he/she, man/woman, ...)
    targets: list[str] | None = None  # words projected onto the direction; null = shipped occupations
    templates: list[str] | None = None  # sentences with one {} slot; null = shipped bleached templates
    weat_tests: list[str] | None = None  # shipped WEAT tests by name; null = all, [] = none
    direction_method: str = "pca"  # pca (Bolukbasi et al. 2016) | mean (normalised mean difference)
    n_permutations: int = 10000  # WEAT permutation count (exact enumeration when there are fewer partitions)
    alignment: str = "mean"  # mean | first | last sub-token of a word


def _single_word(word, what: str) -> str:
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(f"{what}: {word!r} is not a non-empty word")
    if len(word.split()) != 1 or word != word.strip():
        raise ConfigError(f"{what}: {word!r} is not a single word (no spaces); give one word per entry")
    return word


def _check_pairs(pairs, name: str) -> list[list[str]]:
    if not isinstance(pairs, (list, tuple)) or len(pairs) < 2:
        raise ConfigError(f"{name}.pairs: need at least 2 [a, b] word pairs (null = the shipped ones)")
    out = []
    for pair in pairs:
        if isinstance(pair, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"{name}.pairs: {pair!r} is not a 2-element [a, b] list, e.g. [he, she]")
        a, b = (_single_word(word, f"{name}.pairs") for word in pair)
        if a == b:
            raise ConfigError(f"{name}.pairs: [{a}, {b}] pairs a word with itself; give two different words")
        out.append([a, b])
    return out


def _check_templates(templates, name: str) -> list[str]:
    if not isinstance(templates, (list, tuple)) or not templates:
        raise ConfigError(f"{name}.templates: empty; give sentences with one {{}} slot, e.g. ['This is {{}}']")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(
                f"{name}.templates: {template!r} must contain exactly one {{}} slot, e.g. 'The {{}} said that'"
            )
    return list(templates)


def _check_weat(names, name: str) -> dict[str, dict]:
    shipped = shipped_weat()
    chosen = list(shipped) if names is None else list(names)
    unknown = [test for test in chosen if test not in shipped]
    if unknown:
        raise ConfigError(
            f"{name}.weat_tests: unknown test(s) {', '.join(map(str, unknown))}; shipped: {', '.join(shipped)}"
        )
    tests = {}
    for test in chosen:
        for key in WEAT_SETS:
            words = shipped[test].get(key) or []
            if len(words) < 2:
                raise ConfigError(f"{name}.weat_tests: {test} set {key} has {len(words)} word(s); WEAT needs >= 2")
            for word in words:
                _single_word(word, f"{name}.weat_tests {test} set {key}")
        tests[test] = shipped[test]
    return tests


@dataclass
class Plan:
    """Every word list the run needs, resolved from the config and the shipped data."""

    pairs: list[list[str]]
    targets: list[str]
    templates: list[str]
    weat: dict[str, dict]

    def words(self) -> list[str]:
        """Unique words in first-seen order: pairs, targets, then WEAT sets."""
        seen: dict[str, None] = {}
        for pair in self.pairs:
            seen.update(dict.fromkeys(pair))
        seen.update(dict.fromkeys(self.targets))
        for test in self.weat.values():
            for key in WEAT_SETS:
                seen.update(dict.fromkeys(test[key]))
        return list(seen)


def make_plan(cfg: BiasProbeConfig, name: str = "bias_probe") -> Plan:
    pairs = _check_pairs(shipped_pairs() if cfg.pairs is None else cfg.pairs, name)
    targets = shipped_targets() if cfg.targets is None else cfg.targets
    if not isinstance(targets, (list, tuple)) or not targets:
        raise ConfigError(f"{name}.targets: empty; give words to project, or null for the shipped occupations")
    targets = [_single_word(word, f"{name}.targets") for word in targets]
    templates = _check_templates(shipped_templates() if cfg.templates is None else cfg.templates, name)
    return Plan(pairs, list(dict.fromkeys(targets)), templates, _check_weat(cfg.weat_tests, name))


def check_config(info: ModelInfo, cfg: BiasProbeConfig, name: str) -> list[int]:
    check_block_site(info, cfg.hook_point, f"{name}.hook_point")
    if cfg.direction_method not in DIRECTION_METHODS:
        raise ConfigError(
            f"{name}.direction_method: {cfg.direction_method!r} is not one of {', '.join(DIRECTION_METHODS)}"
        )
    if cfg.alignment not in ALIGNMENTS:
        raise ConfigError(f"{name}.alignment: {cfg.alignment!r} is not one of {', '.join(ALIGNMENTS)}")
    if not isinstance(cfg.n_permutations, int) or cfg.n_permutations < MIN_PERMUTATIONS:
        raise ConfigError(
            f"{name}.n_permutations: {cfg.n_permutations!r}; give an integer >= {MIN_PERMUTATIONS} "
            f"(a p-value from fewer permutations is too coarse)"
        )
    make_plan(cfg, name)
    return check_layers(info, cfg.layers, f"{name}.layers")


def template_sentence(template: str, word: str) -> tuple[list[str], int]:
    """The template's words with `word` in the slot, and the slot's word index.

    Text touching the slot (e.g. the '.' of '{}.') becomes a word of its own.
    """
    before, after = template.split("{}")
    prefix, suffix = before.split(), after.split()
    return [*prefix, word, *suffix], len(prefix)


def contextual_vectors(
    model: HookedModel,
    words: list[str],
    templates: list[str],
    layers: list[int],
    hook_point: str,
    alignment: str = "mean",
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    progress=None,
) -> list[torch.Tensor]:
    """[n_words, d] per layer: each word's slot representation averaged over the templates.

    ONE capture pass over every word x template sentence collects every layer.
    """
    sentences, slots = [], []
    for word in words:
        for template in templates:
            sentence, slot = template_sentence(template, word)
            sentences.append(sentence)
            slots.append(slot)
    extra = {"progress": progress} if progress is not None else {}
    captured = word_features(
        model, sentences, hook_names(layers, hook_point), alignment, batch_size=batch_size,
        max_length=max_length, desc="bias_probe", **extra,
    )  # fmt: skip
    rows = [i for i, (t, w) in enumerate(zip(captured.text_ids, captured.word_index, strict=True)) if w == slots[t]]
    word_of = torch.tensor([captured.text_ids[i] // len(templates) for i in rows])
    counts = torch.bincount(word_of, minlength=len(words)).to(torch.float32)
    missing = [words[i] for i in range(len(words)) if counts[i] == 0]
    if missing:
        raise ConfigError(
            f"bias_probe: no token left for {', '.join(missing[:5])} in any template after max_length "
            f"truncation; use shorter templates or a larger max_length"
        )
    index = torch.tensor(rows)
    out = []
    for features in captured.features:
        sums = torch.zeros(len(words), features.shape[1], dtype=torch.float64)
        sums.index_add_(0, word_of, features[index].double())
        out.append(sums / counts.double().unsqueeze(1))
    return out


class BiasProbe(Analyzer):
    name = "bias_probe"
    family = "probing"
    description = "definitional-pair direction, target projections and WEAT association effect sizes per layer"
    Config = BiasProbeConfig

    def validate(self, info: ModelInfo, cfg: BiasProbeConfig) -> BiasProbeConfig:
        layers = check_config(info, cfg, self.name)
        return BiasProbeConfig(**{**cfg.__dict__, "layers": layers})

    def estimate(self, info: ModelInfo, cfg: BiasProbeConfig, workload):
        """Every word in every template, one capture pass per batch (every layer); per layer the
        direction, projections and the WEAT permutation tests."""
        plan = make_plan(cfg, self.name)
        layers = check_config(info, cfg, self.name)
        words = plan.words()
        sentences = [template_sentence(t, w)[0] for w in words for t in plan.templates]
        names = [f"blocks.{L}.{cfg.hook_point}" for L in layers]
        cost = workload.forward_texts([" ".join(s) for s in sentences], logits=1, capture=names)
        d = workload.width_of(names[0])
        weat = sum(len(test[key]) for test in plan.weat.values() for key in WEAT_SETS)
        tests = len(layers) * (cfg.n_permutations * weat * 4 + weat * weat * d)
        return cost + workload.macs(tests + len(layers) * len(words) * d * d) + workload.figures(2, 2)

    def run(self, ctx: RunContext) -> Result:
        cfg: BiasProbeConfig = self.cfg
        layers = cfg.layers if cfg.layers is not None else list(range(ctx.model.info.n_layers))
        plan = make_plan(cfg, self.name)
        words = plan.words()
        position = {word: i for i, word in enumerate(words)}
        vectors = contextual_vectors(
            ctx.model, words, plan.templates, layers, cfg.hook_point, cfg.alignment,
            batch_size=ctx.batch_size, max_length=ctx.max_length, progress=ctx.progress,
        )  # fmt: skip
        a_index = [position[a] for a, _ in plan.pairs]
        b_index = [position[b] for _, b in plan.pairs]
        t_index = [position[word] for word in plan.targets]
        direction_label = f"{plan.pairs[0][0]}\u2212{plan.pairs[0][1]}"

        direction_rows, projection_rows, weat_rows = [], [], []
        min_margin, symmetry_error = float("inf"), 0.0
        p_values = []
        for layer, layer_vectors in zip(layers, vectors, strict=True):
            matrix = layer_vectors.numpy()
            pair_a, pair_b = matrix[a_index], matrix[b_index]
            direction = definitional_direction(pair_a, pair_b, cfg.direction_method)
            margins = pair_margins(pair_a, pair_b, direction.vector)
            min_margin = min(min_margin, float(margins.mean()))
            direction_rows.append(
                {
                    "layer": layer,
                    "explained_variance": direction.explained_variance,
                    "mean_pair_margin": float(margins.mean()),
                    "pairs_positive": int((margins > 0).sum()),
                    "n_pairs": len(plan.pairs),
                }
            )
            for word, value in zip(plan.targets, project(matrix[t_index], direction.vector), strict=True):
                projection_rows.append({"layer": layer, "word": word, "projection": float(value)})
            for test, spec in plan.weat.items():
                x, y, a, b = (matrix[[position[w] for w in spec[key]]] for key in WEAT_SETS)
                forward = weat_permutation_test(x, y, a, b, cfg.n_permutations, seed=ctx.seed)
                symmetry_error = max(symmetry_error, abs(forward.effect_size + weat_effect_size(y, x, a, b)))
                p_values.append(forward.p_value)
                weat_rows.append(
                    {
                        "layer": layer,
                        "test": test,
                        "effect_size": forward.effect_size,
                        "statistic": forward.statistic,
                        "p_value": forward.p_value,
                        "n_permutations": forward.n_permutations,
                        "exact": forward.exact,
                    }
                )

        result = Result()
        directions = pd.DataFrame(direction_rows)
        projections = pd.DataFrame(projection_rows)
        weat = pd.DataFrame(weat_rows, columns=["layer", "test", "effect_size", "statistic", "p_value",
                                                "n_permutations", "exact"])  # fmt: skip
        result.tables["direction"] = directions
        result.tables["projections"] = projections
        result.tables["weat"] = weat

        # the sign convention: mean (a - b) . direction > 0 at every layer
        result.add_check("direction_sign", min_margin, 0.0, mode="min")
        if plan.weat:
            # swapping X and Y negates the effect size (the engine's formula, checked on real data)
            result.add_check("weat_symmetry_error", symmetry_error, 1e-9)
            # p-values outside (0, 1] (a permutation p counts the observed partition, so never 0)
            outside = sum(not 0.0 < p <= 1.0 for p in p_values)
            result.add_check("permutation_p_in_range", float(outside), 0.0)

        for test, frame in weat.groupby("test", sort=False):
            best = frame.loc[frame["effect_size"].abs().idxmax()]
            result.metrics[f"{test}.max_abs_effect_size"] = float(abs(best["effect_size"]))
            result.metrics[f"{test}.max_abs_effect_size_layer"] = float(best["layer"])
            result.metrics[f"{test}.effect_size_at_max"] = float(best["effect_size"])
            result.metrics[f"{test}.p_value_at_max"] = float(best["p_value"])
        best_direction = directions.loc[directions["explained_variance"].idxmax()]
        shown_layer = int(best_direction["layer"])
        result.metrics["direction.max_explained_variance"] = float(best_direction["explained_variance"])
        result.metrics["direction.max_explained_variance_layer"] = float(shown_layer)

        model_name = ctx.model.info.name
        if plan.weat:
            result.add_figure(
                "weat_effect_by_layer",
                plot_effect_by_layer,
                weat,
                f"{model_name} {cfg.hook_point}: WEAT association effect size by layer",
                ctx.style,
            )
        result.add_figure(
            "target_projections",
            plot_projections,
            projections[projections["layer"] == shown_layer],
            f"{model_name} layer {shown_layer} {cfg.hook_point}: projection onto the {direction_label} direction",
            direction_label,
            ctx.style,
        )
        result.summary = {
            "layers": layers,
            "hook_point": cfg.hook_point,
            "direction_method": cfg.direction_method,
            "direction_label": direction_label,
            "alignment": cfg.alignment,
            "pairs": plan.pairs,
            "n_targets": len(plan.targets),
            "templates": plan.templates,
            "weat_tests": {
                test: {key: spec.get(f"{key}_name", key) for key in WEAT_SETS} for test, spec in plan.weat.items()
            },
            "projection_layer": shown_layer,
            "n_permutations": cfg.n_permutations,
            "note": (
                "projections and WEAT effect sizes describe associations in the model's representations "
                "of these word lists; the word lists are probes, not a complete or neutral sample"
            ),
        }
        return result


@figure_function
def plot_effect_by_layer(table: pd.DataFrame, title: str, style: FigureStyle):
    """WEAT effect size by layer, one line per test; circled where the permutation p < 0.05."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = style.figure()
    ax = axes[0, 0]
    for test, frame in table.groupby("test", sort=False):
        frame = frame.sort_values("layer")
        (line,) = ax.plot(frame["layer"], frame["effect_size"], marker="o", markersize=4, label=test)
        low = frame[frame["p_value"] < 0.05]
        ax.scatter(low["layer"], low["effect_size"], s=36, facecolors="none", edgecolors=line.get_color())
    ax.axhline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("association effect size (Cohen's d)")
    ax.legend(fontsize=7, title="circled: permutation p < 0.05", title_fontsize=7)
    ax.set_title(title)
    return fig


@figure_function
def plot_projections(table: pd.DataFrame, title: str, direction_label: str, style: FigureStyle):
    """Target words' projections at one layer, sorted, as horizontal bars."""
    frame = table.sort_values("projection")
    height = max(1.0, len(frame) / 20)
    fig, axes = style.figure(scale=(1.0, height))
    ax = axes[0, 0]
    values = frame["projection"].to_numpy()
    colors = np.where(values >= 0, "tab:blue", "tab:orange")
    ax.barh(range(len(frame)), values, color=colors)
    ax.set_yticks(range(len(frame)), list(frame["word"]), fontsize=6)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"projection onto the {direction_label} direction")
    ax.set_title(title)
    return fig


ANALYZERS = [BiasProbe]
