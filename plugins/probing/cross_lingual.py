"""`cross_lingual`: do a layer's representations of translations line up across languages?

The analyzer reads a parallel set (the shipped `data/parallel.jsonl`, en/fr/de/es, or a user's
.jsonl/.csv with one field/column per language; row i of every language is one sentence) and
ignores the run's texts. Every sentence of every language is captured in ONE forward pass per
batch for every chosen layer, pooled to one vector per sentence (`pooling: mean|last`).

Per layer and ordered language pair (source -> target), `crosslingual_metrics` gives the mean
cosine of translations vs non-translations and translation retrieval (accuracy@1 of the cosine
nearest neighbour, and mean reciprocal rank). Pairs from the `pivot` language drive the
metrics and the figures; every ordered pair is in the `cross_lingual` table.

Why `center` (on by default): each language's sentences share an offset at every layer (the
language-identity direction a probe reads). Between languages that offset dominates cosine, so
raw nearest neighbours are decided by "which language is closer" more than by meaning.
Subtracting each language's mean vector per layer removes the offset and leaves the
within-language variation that translation retrieval is about (as in Libovický et al. 2020).
The table reports retrieval both centred (`retrieval_at_1`) and raw (`retrieval_at_1_raw`).

The language-identity probe (`probe: true`) fits per-layer logistic probes (`probes.probe_layers`,
seeds 0, 1, 2) on the RAW features (centring per language would erase exactly what it reads),
with each sentence id as the split group, so all translations of one sentence fall in the same
train/validation/test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .capture import TEXT_POOLINGS, check_block_site, hook_names, pooled_features
from .crosslingual_metrics import center_rows, pair_metrics, retrieval_accuracy
from .labelled import DATA_DIR, read_parallel
from .linear_probe import curve_table
from .probes import ProbeConfig, check_probe_inputs, probe_layers

SHIPPED_PARALLEL = "parallel.jsonl"
PROBE_SEEDS = (0, 1, 2)
COLUMNS = (
    "layer",
    "source",
    "target",
    "translation_cosine",
    "non_translation_cosine",
    "gap",
    "retrieval_at_1",
    "retrieval_at_1_raw",
    "mrr",
)


@dataclass
class CrossLingualConfig:
    path: str | None = None  # null = shipped parallel.jsonl; else your .jsonl/.csv, one field per language
    languages: list[str] = field(default_factory=lambda: ["en", "fr", "de", "es"])  # at least 2
    pivot: str = "en"  # metrics and figures: pivot -> every other language (the table has all pairs)
    hook_point: str = "resid_post"  # per-block site
    layers: list[int] | None = None  # null = every layer
    pooling: str = "mean"  # mean over a sentence's tokens | last token
    center: bool = True  # subtract each language's mean vector per layer before cosine/retrieval
    probe: bool = True  # language-identity probe per layer (split groups = sentence ids)
    max_sentences: int | None = None  # first N parallel rows (null = all)


def parallel_path(cfg: CrossLingualConfig):
    return cfg.path if cfg.path else DATA_DIR / SHIPPED_PARALLEL


def load_parallel(cfg: CrossLingualConfig, name: str) -> list[dict]:
    """The configured parallel rows (first max_sentences), every language present on every row."""
    try:
        rows = read_parallel(parallel_path(cfg), tuple(cfg.languages))
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None
    if cfg.max_sentences is not None:
        rows = rows[: cfg.max_sentences]
    if len(rows) < 2:
        raise ConfigError(
            f"{name}: {len(rows)} parallel sentence(s); retrieval needs at least 2 (more rows or max_sentences)"
        )
    return rows


def language_id_inputs(rows: list[dict], languages: list[str]) -> tuple[list[str], list[str], list[int]]:
    """(texts, language labels, sentence-id groups), language-major: all of languages[0], then ..."""
    texts, labels, groups = [], [], []
    for lang in languages:
        for group, row in enumerate(rows):
            texts.append(row[lang])
            labels.append(lang)
            groups.append(group)
    return texts, labels, groups


def _probe_config() -> ProbeConfig:
    return ProbeConfig(seeds=PROBE_SEEDS)


def check_config(info: ModelInfo, cfg: CrossLingualConfig, name: str) -> list[int]:
    languages = list(cfg.languages)
    if len(languages) < 2:
        raise ConfigError(f"{name}.languages: {languages}; give at least 2 languages, e.g. [en, fr, de, es]")
    if len(set(languages)) != len(languages):
        raise ConfigError(f"{name}.languages: {languages} repeats a language; list each once")
    if cfg.pivot not in languages:
        raise ConfigError(f"{name}.pivot: {cfg.pivot!r} is not in languages={languages}; add it or pick one of those")
    if cfg.pooling not in TEXT_POOLINGS:
        raise ConfigError(f"{name}.pooling: {cfg.pooling!r} is not one of {', '.join(TEXT_POOLINGS)}")
    check_block_site(info, cfg.hook_point, f"{name}.hook_point")
    if cfg.max_sentences is not None and cfg.max_sentences < 2:
        raise ConfigError(f"{name}.max_sentences: {cfg.max_sentences}; retrieval needs at least 2 (or null for all)")
    return check_layers(info, cfg.layers, f"{name}.layers")


class CrossLingual(Analyzer):
    name = "cross_lingual"
    family = "probing"
    description = "per layer: translation vs non-translation cosine, translation retrieval@1, language-id probe"
    Config = CrossLingualConfig

    def validate(self, info: ModelInfo, cfg: CrossLingualConfig) -> CrossLingualConfig:
        layers = check_config(info, cfg, self.name)
        rows = load_parallel(cfg, self.name)  # missing files and languages: before weights load
        if cfg.probe:
            _, labels, groups = language_id_inputs(rows, list(cfg.languages))
            check_probe_inputs(labels, groups, config=_probe_config(), what=f"{self.name} language-id probe")
        return CrossLingualConfig(**{**cfg.__dict__, "languages": list(cfg.languages), "layers": layers})

    def estimate(self, info: ModelInfo, cfg: CrossLingualConfig, workload):
        """Every sentence in every language, one capture pass per batch (every layer); per layer the
        cross-language cosines and retrievals, and the language-identity probes."""
        from interpsuite.estimate_analyzers import probe_fit_macs

        layers = check_config(info, cfg, self.name)
        rows = load_parallel(cfg, self.name)
        texts, _, _ = language_id_inputs(rows, list(cfg.languages))
        names = hook_names(layers, cfg.hook_point)
        cost = workload.forward_texts(texts, logits=1, capture=names)
        n, d, k = len(rows), workload.width_of(names[0]), len(cfg.languages)
        cost = cost + workload.macs(len(layers) * k * k * n * n * d)
        if cfg.probe:
            problems = len(layers) * len(ProbeConfig().c_grid) * len(PROBE_SEEDS)
            cost = cost + workload.macs(probe_fit_macs(problems, n * k, d, k))
        return cost + workload.figures(2 + int(cfg.probe), 3)

    def run(self, ctx: RunContext) -> Result:
        cfg: CrossLingualConfig = self.cfg
        layers = cfg.layers if cfg.layers is not None else list(range(ctx.model.info.n_layers))
        languages = list(cfg.languages)
        rows = load_parallel(cfg, self.name)
        n = len(rows)
        texts, labels, groups = language_id_inputs(rows, languages)
        feats, _ = pooled_features(
            ctx.model, texts, hook_names(layers, cfg.hook_point), cfg.pooling, batch_size=ctx.batch_size,
            max_length=ctx.max_length, progress=ctx.progress, desc=f"{self.name} capture",
        )  # fmt: skip
        # per layer, per language: [n, d] (rows are language-major, see language_id_inputs)
        raw = {
            layer: {lang: x[k * n : (k + 1) * n] for k, lang in enumerate(languages)}
            for layer, x in zip(layers, feats, strict=True)
        }
        centred = {layer: {lang: center_rows(x) for lang, x in by_lang.items()} for layer, by_lang in raw.items()}
        used = centred if cfg.center else raw

        result = Result()
        table, max_abs = self._pair_table(layers, languages, raw, used)
        result.tables["cross_lingual"] = table
        chance = 1.0 / n
        result.metrics["chance_level"] = chance
        result.metrics["n_sentences"] = float(n)
        pivot_rows = table[table["source"] == cfg.pivot]
        by_layer = pivot_rows.groupby("layer", sort=True)[["retrieval_at_1", "retrieval_at_1_raw", "gap"]].mean()
        best_layer = int(by_layer["retrieval_at_1"].idxmax())
        result.metrics["retrieval_at_1.best_layer"] = float(best_layer)
        result.metrics["retrieval_at_1.best"] = float(by_layer.loc[best_layer, "retrieval_at_1"])
        result.metrics["retrieval_at_1.best_raw"] = float(by_layer["retrieval_at_1_raw"].max())
        result.metrics["retrieval_at_1.mean"] = float(by_layer["retrieval_at_1"].mean())
        result.metrics["gap.best"] = float(by_layer["gap"].max())
        result.metrics["gap.best_layer"] = float(by_layer["gap"].idxmax())

        # a language retrieved into itself must score exactly 1.0 (duplicate sentences dropped: they tie)
        self_layer = layers[-1]
        unique = sorted({row[cfg.pivot]: i for i, row in reversed(list(enumerate(rows)))}.values())
        pivot_x = used[self_layer][cfg.pivot][unique]
        self_at_1 = retrieval_accuracy(pivot_x, pivot_x)[0] if len(unique) >= 2 else 1.0
        result.add_check("retrieval_self_check", 1.0 - self_at_1, 0.0)
        result.add_check("cosine_range", max_abs, 1.0 + 1e-6)

        summary: dict = {
            "layers": layers,
            "hook_point": cfg.hook_point,
            "languages": languages,
            "pivot": cfg.pivot,
            "pooling": cfg.pooling,
            "centered": bool(cfg.center),
            "n_sentences": n,
            "source": str(parallel_path(cfg)),
            "chance_level": chance,
            "self_check_layer": self_layer,
            "note": "the run's texts are not used: the analyzer reads its parallel set",
        }
        from .plots import plot_probe_curves

        title = f"{ctx.model.info.name} {cfg.hook_point}"
        result.add_figure(
            "retrieval_by_layer",
            plot_retrieval,
            pivot_rows,
            chance,
            f"{title}: translation retrieval ({n} sentences)",
            ctx.style,
        )
        result.add_figure(
            "cosine_by_layer", plot_cosines, pivot_rows, f"{title}: translation vs non-translation cosine", ctx.style
        )
        if cfg.probe:
            feature_map = {(cfg.hook_point, layer): x for layer, x in zip(layers, feats, strict=True)}
            report = probe_layers(feature_map, labels, groups, config=_probe_config())
            probe_table = curve_table("language_id", report)
            result.tables["language_id"] = probe_table
            best = probe_table.loc[probe_table["accuracy"].idxmax()]
            result.metrics["language_id.best_accuracy"] = float(best["accuracy"])
            result.metrics["language_id.best_layer"] = float(best["layer"])
            result.metrics["language_id.majority_baseline"] = float(report.majority_baseline)
            result.add_figure(
                "language_id_by_layer",
                plot_probe_curves,
                probe_table,
                f"{title}: language-identity probe ({len(labels)} examples)",
                ctx.style,
            )
        result.summary = summary
        return result

    @staticmethod
    def _pair_table(layers, languages, raw, used) -> tuple[pd.DataFrame, float]:
        records = []
        max_abs = 0.0
        for layer in layers:
            for source in languages:
                for target in languages:
                    if source == target:
                        continue
                    metrics = pair_metrics(used[layer][source], used[layer][target])
                    raw_metrics = pair_metrics(raw[layer][source], raw[layer][target])
                    max_abs = max(max_abs, metrics.max_abs_cosine, raw_metrics.max_abs_cosine)
                    records.append(
                        {
                            "layer": int(layer),
                            "source": source,
                            "target": target,
                            "translation_cosine": metrics.translation_cosine,
                            "non_translation_cosine": metrics.non_translation_cosine,
                            "gap": metrics.gap,
                            "retrieval_at_1": metrics.retrieval_at_1,
                            "retrieval_at_1_raw": raw_metrics.retrieval_at_1,
                            "mrr": metrics.mrr,
                        }
                    )
        return pd.DataFrame(records, columns=list(COLUMNS)), max_abs


@figure_function
def plot_retrieval(table: pd.DataFrame, chance: float, title: str, style: FigureStyle):
    """Retrieval accuracy@1 by layer, one line per source -> target pair, chance dashed."""
    fig, axes = style.figure()
    ax = axes[0, 0]
    for (source, target), frame in table.groupby(["source", "target"], sort=False):
        frame = frame.sort_values("layer")
        ax.plot(frame["layer"], frame["retrieval_at_1"], marker="o", markersize=3, label=f"{source}→{target}")
    ax.axhline(chance, linestyle="--", color="grey", label=f"chance (1/{round(1 / chance)})")
    ax.set_xlabel("layer")
    ax.set_ylabel("retrieval accuracy@1")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title)
    return fig


@figure_function
def plot_cosines(table: pd.DataFrame, title: str, style: FigureStyle):
    """Mean translation and non-translation cosine by layer (averaged over the pairs given)."""
    frame = table.groupby("layer", sort=True)[["translation_cosine", "non_translation_cosine"]].mean()
    fig, axes = style.figure()
    ax = axes[0, 0]
    layers = frame.index.to_numpy()
    ax.plot(layers, frame["translation_cosine"], marker="o", markersize=3, label="translations")
    ax.plot(layers, frame["non_translation_cosine"], marker="s", markersize=3, label="non-translations")
    ax.fill_between(layers, frame["non_translation_cosine"], frame["translation_cosine"], alpha=0.2, label="gap")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean cosine")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title)
    return fig


ANALYZERS = [CrossLingual]
