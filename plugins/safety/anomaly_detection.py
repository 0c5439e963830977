"""`anomaly_detection`: how well do a model's activations tell normal texts from unusual ones?

A thin analyzer over `anomaly.AnomalyDetector` (the engine; see its docstring for the method):

1. The normal texts (`normal_path`, or the shipped English set `data/normal_en.txt`) are
   shuffled (seeded) and split: a `test_fraction` is kept out of everything and used only to
   measure; the rest goes to `AnomalyDetector.fit`, which itself holds out `held_out` of it to
   standardise the layers and set the threshold at the target `fpr`.
2. The test normals and every out-of-distribution set are scored (one forward pass per batch).
   OOD sets: shipped files (`code`, `languages`, `unusual_chars`) and two made from the
   model's tokenizer with the run's seed (`random_tokens`: uniformly drawn non-special token
   ids; `repeated_tokens`: one token repeated), plus your own file (`ood_path`).
3. AUROC (sklearn's roc_auc_score, test normals = negatives, the set = positives) per set and
   per layer, and for the aggregated score; the detection rate at the threshold per set.
4. Checks: the false-positive rate measured on the test normals is within a binomial tolerance
   of the target (see `fpr_tolerance`), and the detector saved to
   <run>/data/anomaly_detection/detector and loaded back gives identical scores.
5. The run's own input texts are scored too (table `input_scores`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.data import FileOptions, read_file
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .anomaly import AGGREGATES, METHODS, AnomalyDetector, AnomalyScores, DetectorConfig
from .texts import check_texts

DATA_DIR = Path(__file__).parent / "data"
SHIPPED_NORMAL = DATA_DIR / "normal_en.txt"
FILE_SETS = {
    "code": DATA_DIR / "ood_code.txt",
    "languages": DATA_DIR / "ood_languages.txt",
    "unusual_chars": DATA_DIR / "ood_unusual_chars.txt",
}
GENERATED_SETS = ("random_tokens", "repeated_tokens")
OOD_SETS = (*FILE_SETS, *GENERATED_SETS)


@dataclass
class AnomalyDetectionConfig:
    normal_path: str | None = None  # normal texts: .txt (one per line) or .jsonl; null = shipped English set
    text_field: str = "text"  # .jsonl: the field holding the text
    ood_sets: list[str] = field(default_factory=lambda: list(OOD_SETS))
    ood_path: str | None = None  # your own OOD texts (.txt/.jsonl), evaluated as set <file stem>
    max_normal: int | None = None  # first N normal texts (null = all)
    max_ood: int | None = None  # first N texts of each OOD set (null = all)
    n_generated: int = 80  # texts in each generated set (random_tokens, repeated_tokens)
    test_fraction: float = 0.2  # normal texts kept out of the fit: FPR measurement and AUROC negatives
    layers: list[int] | None = None  # null = every layer
    hook_point: str = "resid_post"
    method: str = "mahalanobis"  # mahalanobis | knn
    k: int = 10  # knn neighbour
    pooling: str = "mean"  # mean | last
    aggregate: str = "mean"  # mean | max of per-layer standardised scores
    fpr: float = 0.05  # target false-positive rate of the threshold
    held_out: float = 0.25  # fraction of the fit texts that set the threshold
    token_scores: bool = False  # fit token-level Gaussians and report per-token scores of the inputs
    max_bank: int = 10000  # knn: reservoir size
    save: bool = True  # save the detector to <run>/data/anomaly_detection/detector

    def detector_config(self, batch_size: int = 16, max_length: int | None = 128, seed: int = 0) -> DetectorConfig:
        return DetectorConfig(
            layers=self.layers, hook_point=self.hook_point, method=self.method, k=self.k, pooling=self.pooling,
            aggregate=self.aggregate, fpr=self.fpr, held_out=self.held_out, token_scores=self.token_scores,
            max_bank=self.max_bank, batch_size=batch_size, max_length=max_length, seed=seed,
        )  # fmt: skip


def read_texts(path: str | Path, text_field: str, what: str) -> list[str]:
    """Texts of a .txt (one per line; blank lines skipped), .jsonl or .csv file, read by the core
    reader of users' files (`interpsuite.data.read_file`: `file:line` in every message)."""
    options = FileOptions(path=what, text_field=f"{what.rsplit('.', 1)[0]}.text_field", encoding=None)
    return read_file(path, text_field, options=options)


def fpr_tolerance(target: float, n_test: int, n_calibration: int) -> float:
    """How far the measured FPR may lie from the target: 3 binomial standard errors, plus one calibration step.

    The threshold is a quantile of n_calibration held-out scores, so the detector's true FPR
    varies around the target with variance ~ p(1-p)/n_calibration, and is then measured on
    n_test other texts with variance ~ p(1-p)/n_test; the quantile also moves in steps of
    1/n_calibration. Three standard errors of the sum make a false alarm rare (~0.3%)."""
    p = float(target)
    return 3.0 * math.sqrt(p * (1.0 - p) * (1.0 / n_test + 1.0 / n_calibration)) + 1.0 / n_calibration


def generated_sets(tokenizer, n: int, seed: int) -> dict[str, list[str]]:
    """random_tokens and repeated_tokens, drawn from the tokenizer's non-special ids with `seed`."""
    rng = np.random.default_rng(seed)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = np.array([i for i in range(len(tokenizer)) if i not in special])
    random_texts: list[str] = []
    repeated: list[str] = []
    for _ in range(50 * n):
        if len(random_texts) >= n:
            break
        text = tokenizer.decode(rng.choice(ids, size=int(rng.integers(8, 25))).tolist())
        if text.strip():
            random_texts.append(text)
    for _ in range(50 * n):
        if len(repeated) >= n:
            break
        token = int(rng.choice(ids))
        if not tokenizer.decode([token]).strip():
            continue
        repeated.append(tokenizer.decode([token] * int(rng.integers(8, 33))))
    return {"random_tokens": random_texts, "repeated_tokens": repeated}


class AnomalyDetection(Analyzer):
    name = "anomaly_detection"
    window_outputs = "stitch"  # a score per window, token scores stitched
    family = "safety"
    description = "Mahalanobis (Ledoit-Wolf) / kNN anomaly detector on activations: AUROC per OOD set and layer"
    Config = AnomalyDetectionConfig

    def validate(self, info: ModelInfo, cfg: AnomalyDetectionConfig) -> AnomalyDetectionConfig:
        what = self.name
        if cfg.method not in METHODS:
            raise ConfigError(f"{what}.method: {cfg.method!r} is not one of {', '.join(METHODS)}")
        if cfg.aggregate not in AGGREGATES:
            raise ConfigError(f"{what}.aggregate: {cfg.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        resolved = cfg.detector_config().validate(info, what)
        unknown = [name for name in cfg.ood_sets if name not in OOD_SETS]
        if unknown:
            raise ConfigError(f"{what}.ood_sets: unknown {unknown}; choose from {', '.join(OOD_SETS)}")
        if not cfg.ood_sets and cfg.ood_path is None:
            raise ConfigError(f"{what}.ood_sets: empty and no ood_path; give at least one OOD set")
        if not 0.0 < cfg.test_fraction < 1.0:
            raise ConfigError(f"{what}.test_fraction: {cfg.test_fraction} must lie strictly between 0 and 1")
        if cfg.n_generated < 2:
            raise ConfigError(f"{what}.n_generated: {cfg.n_generated}; give at least 2")
        for name in ("max_normal", "max_ood"):
            value = getattr(cfg, name)
            if value is not None and value < 2:
                raise ConfigError(f"{what}.{name}: {value}; give at least 2 or null")
        normals = self._normals(cfg)
        n_test, n_fit = self._split_sizes(cfg, len(normals))
        resolved.check_sizes(n_fit, f"{what} (normal set after keeping {n_test} for testing)")
        for name in cfg.ood_sets:
            if name in FILE_SETS:
                check_texts(read_texts(FILE_SETS[name], "text", f"{what} set {name}"), f"{what} set {name}")
        if cfg.ood_path is not None:
            check_texts(read_texts(cfg.ood_path, cfg.text_field, f"{what}.ood_path"), f"{what}.ood_path")
        return AnomalyDetectionConfig(**{**asdict(cfg), "layers": resolved.layers})

    def _normals(self, cfg: AnomalyDetectionConfig) -> list[str]:
        path = cfg.normal_path or SHIPPED_NORMAL
        what = f"{self.name}.normal_path" if cfg.normal_path else f"{self.name} shipped normal set"
        texts = read_texts(path, cfg.text_field, what)[: cfg.max_normal]
        return check_texts(texts, what)

    @staticmethod
    def _split_sizes(cfg: AnomalyDetectionConfig, n: int) -> tuple[int, int]:
        n_test = max(2, int(round(cfg.test_fraction * n)))
        return n_test, n - n_test

    def _ood_sets(self, cfg: AnomalyDetectionConfig, ctx: RunContext) -> dict[str, list[str]]:
        sets: dict[str, list[str]] = {}
        generated = (
            generated_sets(ctx.model.tokenizer, cfg.n_generated, ctx.seed)
            if any(n in GENERATED_SETS for n in cfg.ood_sets)
            else {}
        )
        for name in cfg.ood_sets:
            texts = read_texts(FILE_SETS[name], "text", name) if name in FILE_SETS else generated[name]
            sets[name] = texts[: cfg.max_ood]
        if cfg.ood_path is not None:
            sets[Path(cfg.ood_path).stem] = read_texts(cfg.ood_path, cfg.text_field, "ood_path")[: cfg.max_ood]
        return sets

    def estimate(self, info: ModelInfo, cfg: AnomalyDetectionConfig, workload):
        """A capturing pass over the normal texts kept for the fit, a Gaussian (or kNN bank) per layer,
        a scoring pass over the test normals and every OOD set, the test normals again after saving
        and reloading the detector, and the run's inputs scored."""
        from types import SimpleNamespace

        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        hooks = [f"blocks.{layer}.{cfg.hook_point}" for layer in layers]
        normals = self._normals(cfg)
        n_test, n_fit = self._split_sizes(cfg, len(normals))
        sets = self._ood_sets(cfg, SimpleNamespace(model=workload.model, seed=workload.seed))
        d = workload.width_of(hooks[0])
        lengths = workload.token_lengths(normals)
        cost = workload.forward_batches(lengths[n_test:], logits=1, capture=hooks).hold(8 * n_fit * d * len(layers))
        cost = cost + workload.macs(2 * len(layers) * (n_fit * d * d + d**3))  # covariance and its inverse, float64
        scored = lengths[:n_test] * 2 + [n for texts in sets.values() for n in workload.token_lengths(texts)]
        scored += list(workload.lengths)
        cost = cost + workload.forward_batches(scored, logits=1, capture=hooks)
        cost = cost + workload.macs(2 * len(scored) * len(layers) * d * d)
        saved = workload.disk(8 * len(layers) * (d * d + 2 * d)) if cfg.save else workload.disk(0)
        return cost + saved + workload.figures(2) + workload.table(len(scored) * (len(layers) + 4), 1)

    def run(self, ctx: RunContext) -> Result:
        cfg: AnomalyDetectionConfig = self.cfg
        model = ctx.model
        normals = self._normals(cfg)
        n_test, _ = self._split_sizes(cfg, len(normals))
        order = np.random.default_rng(ctx.seed).permutation(len(normals))
        test_normals = [normals[i] for i in sorted(order[:n_test])]
        fit_normals = [normals[i] for i in sorted(order[n_test:])]

        started = time.perf_counter()
        detector = AnomalyDetector.fit(
            model, fit_normals, cfg.detector_config(ctx.batch_size, ctx.max_length, ctx.seed), progress=ctx.progress
        )
        fit_s = time.perf_counter() - started

        sets = {"normal (test)": test_normals, **self._ood_sets(cfg, ctx)}
        scored: dict[str, AnomalyScores] = {
            name: detector.score(model, texts, batch_size=ctx.batch_size, progress=ctx.progress)
            for name, texts in sets.items()
        }
        result = Result()
        normal = scored["normal (test)"]
        auroc, summary_rows = self._auroc(detector, scored, sets)

        fpr = float(normal.flags.double().mean())
        tolerance = fpr_tolerance(cfg.fpr, n_test, detector.n_calibration)
        result.add_check("heldout_fpr_abs_error", abs(fpr - cfg.fpr), tolerance)
        saved = self._check_reload(ctx, result, detector, test_normals, normal, cfg)

        metrics = result.metrics
        metrics.update({
            "fpr.target": float(cfg.fpr), "fpr.heldout": fpr, "fpr.tolerance": tolerance,
            "threshold": float(detector.text_level.threshold), "n.train": float(detector.n_train),
            "n.calibration": float(detector.n_calibration), "n.test": float(n_test), "fit_s": fit_s,
        })  # fmt: skip
        if detector.shrinkage:
            metrics["shrinkage.mean"] = float(np.mean(detector.shrinkage))
        for row in summary_rows:
            name = row["set"]
            metrics[f"auroc.{name}.aggregated"] = row["auroc_aggregated"]
            metrics[f"auroc.{name}.best_layer"] = float(row["best_layer"])
            metrics[f"auroc.{name}.best_layer_auroc"] = row["best_layer_auroc"]
            metrics[f"detection_rate.{name}"] = row["detection_rate"]
        if summary_rows:
            metrics["auroc.mean_aggregated"] = float(np.mean([r["auroc_aggregated"] for r in summary_rows]))

        result.tables["auroc"] = auroc
        result.tables["auroc_summary"] = pd.DataFrame(summary_rows)
        result.tables["scores"] = pd.concat(
            [scored[name].table(texts).assign(set=name) for name, texts in sets.items()], ignore_index=True
        )
        inputs = [text for text in ctx.inputs.texts if text.strip()]
        if inputs:
            scores = detector.score(model, inputs, per_token=cfg.token_scores, batch_size=ctx.batch_size)
            table = scores.table(inputs)
            table.insert(0, "text_id", [i for i, text in enumerate(ctx.inputs.texts) if text.strip()])
            result.tables["input_scores"] = table
            if ctx.inputs.windows is not None:  # long documents: a document is as anomalous as its worst window
                result.tables["document_scores"] = _document_scores(table, ctx.inputs.windows.windows)
            if cfg.token_scores and scores.tokens is not None:
                result.tables["input_token_scores"] = _token_table(scores)
        title = f"{model.info.name} {cfg.hook_point} ({cfg.method}, {cfg.pooling} pooling)"
        result.add_figure("auroc_heatmap", plot_auroc_heatmap, auroc, title, ctx.style)
        result.add_figure(
            "score_histograms",
            plot_score_histograms,
            result.tables["scores"],
            detector.text_level.threshold,
            title,
            ctx.style,
        )
        result.summary = {
            "detector": detector.summary(),
            "notes": list(detector.notes),
            "sets": {name: len(texts) for name, texts in sets.items()},
            "normal_source": str(cfg.normal_path or SHIPPED_NORMAL.name),
            "auroc": {row["set"]: row["auroc_aggregated"] for row in summary_rows},
        }
        if saved is not None:
            result.summary["detector_path"] = str(saved)
        return result

    def _auroc(
        self, detector: AnomalyDetector, scored: dict[str, AnomalyScores], sets: dict[str, list[str]]
    ) -> tuple[pd.DataFrame, list[dict]]:
        from sklearn.metrics import roc_auc_score

        normal = scored["normal (test)"]
        rows, summary = [], []
        for name, scores in scored.items():
            if name == "normal (test)":
                continue
            labels = np.r_[np.zeros(len(normal.score)), np.ones(len(scores.score))]
            per_layer = {}
            for i, layer in enumerate(detector.layers):
                values = np.r_[normal.per_layer[:, i].numpy(), scores.per_layer[:, i].numpy()]
                per_layer[layer] = float(roc_auc_score(labels, values))
                rows.append({"set": name, "layer": str(layer), "auroc": per_layer[layer]})
            aggregated = float(roc_auc_score(labels, np.r_[normal.score.numpy(), scores.score.numpy()]))
            rows.append({"set": name, "layer": "aggregated", "auroc": aggregated})
            best = max(per_layer, key=per_layer.get)
            summary.append({
                "set": name, "n": len(sets[name]), "auroc_aggregated": aggregated, "best_layer": int(best),
                "best_layer_auroc": per_layer[best], "detection_rate": float(scores.flags.double().mean()),
            })  # fmt: skip
        return pd.DataFrame(rows), summary

    def _check_reload(self, ctx, result, detector, texts, scores, cfg) -> Path | None:
        """Saved then loaded (for this model): the same scores, exactly."""
        import tempfile

        saved = None
        if cfg.save:
            path = ctx.data_dir(self.name) / "detector"
            saved = detector.save(path)
            reloaded = AnomalyDetector.load(path, model=ctx.model)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                detector.save(tmp)
                reloaded = AnomalyDetector.load(tmp, model=ctx.model)
        again = reloaded.score(ctx.model, texts, batch_size=ctx.batch_size)
        diff = float((again.score - scores.score).abs().max())
        diff = max(diff, float((again.per_layer - scores.per_layer).abs().max()))
        result.add_check("reload_max_abs_score_diff", diff, 0.0)
        return saved


def _document_scores(table: pd.DataFrame, windows) -> pd.DataFrame:
    """Per document (data.long_documents=window): its windows' highest and mean score, flagged windows."""
    frame = table.assign(document=[windows[i].document for i in table["text_id"]])
    grouped = frame.groupby("document")
    return pd.DataFrame(
        {
            "windows": grouped.size(),
            "max_score": grouped["score"].max(),
            "mean_score": grouped["score"].mean(),
            "flagged_windows": grouped["flag"].sum().astype(int),
        }
    ).reset_index()


def _token_table(scores: AnomalyScores) -> pd.DataFrame:
    rows = []
    for text_index, (tokens, values, flags) in enumerate(
        zip(scores.tokens or [], scores.token_score or [], scores.token_flags or [], strict=True)
    ):
        for position, (token, value, flag) in enumerate(zip(tokens, values.tolist(), flags.tolist(), strict=True)):
            rows.append({"text": text_index, "position": position, "token": token, "score": value, "flag": flag})
    return pd.DataFrame(rows)


@figure_function
def plot_auroc_heatmap(table: pd.DataFrame, title: str, style: FigureStyle):
    """AUROC of each OOD set (rows) at each layer and aggregated (columns)."""
    pivot = table.pivot(index="set", columns="layer", values="auroc")
    layer_cols = sorted((c for c in pivot.columns if c != "aggregated"), key=int)
    pivot = pivot[[*layer_cols, "aggregated"]]
    fig, axes = style.figure(scale=(max(1.0, 0.04 * len(pivot.columns) + 0.6), 0.3 + 0.12 * len(pivot)))
    ax = axes[0, 0]
    image = ax.imshow(pivot.to_numpy(dtype=float), aspect="auto", vmin=0.5, vmax=1.0, cmap=style.cmap)
    ax.set_yticks(range(len(pivot.index)), list(pivot.index))
    step = max(1, len(pivot.columns) // 16)
    ticks = list(range(0, len(pivot.columns) - 1, step)) + [len(pivot.columns) - 1]
    ax.set_xticks(ticks, [str(pivot.columns[i]) for i in ticks], rotation=45)
    ax.set_xlabel("layer")
    ax.set_title(f"{title}: AUROC vs held-out normal texts")
    fig.colorbar(image, ax=ax, label="AUROC")
    return fig


@figure_function
def plot_score_histograms(scores: pd.DataFrame, threshold: float, title: str, style: FigureStyle):
    """Distribution of the aggregated score per set, with the threshold (symmetric-log x axis:
    OOD scores can be a hundred times the normal range, which a linear axis would squash)."""
    fig, axes = style.figure()
    ax = axes[0, 0]
    values = scores["score"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    edges = np.linspace(np.sign(low) * np.log1p(abs(low)), np.sign(high) * np.log1p(abs(high)) + 1e-9, 50)
    bins = np.sign(edges) * np.expm1(np.abs(edges))
    for name, frame in scores.groupby("set", sort=False):
        ax.hist(frame["score"].to_numpy(dtype=float), bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} ({len(frame)})")  # fmt: skip
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("aggregated anomaly score (standardised; symmetric log scale)")
    ax.set_ylabel("texts")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


ANALYZERS = [AnomalyDetection]

__all__ = ["AnomalyDetection", "AnomalyDetectionConfig", "fpr_tolerance", "generated_sets", "read_texts"]
