"""`failure_prediction`: will the model get this input wrong? Learned from its internals.

A thin analyzer over `failure` (the engine) and `failure_tasks` (prompts with checkable
answers). It labels every task prompt by the model's own greedy answer (1 = wrong), extracts
the selected feature families in one forward pass per batch, fits the predictor on a
stratified training split and measures it on the held-out split against the baseline of the
top-1 probability alone. The fitted predictor is saved (safetensors + JSON) to
<run dir>/data/failure_prediction/predictor, where `interpsuite predict-failure` reads it.

The run's inputs (data.*) are not used: the tasks are the inputs. Per-task numbers are in
`task_accuracy`; a task on which the model is always right or always wrong has no AUROC of
its own (it is reported as undefined, with the reason), though its examples still count in
the pooled evaluation. When the model is right (or wrong) on (nearly) every prompt, no
predictor can be fitted: the result is still "ok", with the accuracies, the examples and a
summary `finding` saying how many were right and wrong and what to add (AUROC undefined,
metrics null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .failure import (
    FAMILIES,
    Evaluation,
    FailurePredictor,
    auroc,
    check_families,
    default_probe_layers,
    evaluate,
    extract,
    label_items,
    prepared_prompts,
)
from .failure_tasks import SHIPPED_TASKS, TaskItem, TaskOptions, load_tasks

#: re-scoring from text runs other batch shapes: float32 noise (~1e-7) in the features, amplified
#: by standardising features whose spread is tiny (attention entropies of random tiny models
#: vary by ~1e-5), moves probabilities by up to ~4e-4 there; on SmolLM2 the difference is ~1e-6
SCORE_PATH_TOLERANCE = 1e-3
#: greedy generation and the feature pass read the same logits; ties may break differently
FIRST_TOKEN_MISMATCH_TOLERANCE = 0.01
#: test prompts re-scored through `FailurePredictor.score(model, prompts)` for the check
RESCORED_PROMPTS = 16


@dataclass
class FailurePredictionConfig:
    tasks: list[str] = field(default_factory=lambda: list(SHIPPED_TASKS))  # shipped tasks ([] = only `path`)
    path: str | None = None  # your .jsonl of {prompt, answer} objects (answer: a string or a list)
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    n_arithmetic: int = 120  # generated arithmetic prompts
    n_ioi: int = 100  # IOI prompts (mechanistic.pairs.ioi_pairs)
    max_per_task: int | None = None  # first N prompts of each task (null = all)
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    probe_layers: list[int] | None = None  # null = the middle layer and the one 3/4 up
    test_fraction: float = 0.3  # held-out share (stratified by label)
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    probe_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1])
    folds: int = 5  # C selection and the probe's cross-fitting
    n_bins: int = 10  # equal-width calibration bins
    n_bootstrap: int = 1000  # paired bootstrap of AUROC(predictor) - AUROC(baseline)
    max_new_tokens: int = 8  # cap on the greedy answer length
    save_predictor: bool = True  # to <run dir>/data/failure_prediction/predictor
    top_features: int = 15  # bars in the coefficient figure


def _task_options(cfg: FailurePredictionConfig, seed: int = 0) -> TaskOptions:
    return TaskOptions(
        tasks=list(cfg.tasks),
        path=cfg.path,
        prompt_field=cfg.prompt_field,
        answer_field=cfg.answer_field,
        n_arithmetic=cfg.n_arithmetic,
        n_ioi=cfg.n_ioi,
        max_per_task=cfg.max_per_task,
        seed=seed,
    )


def task_items(cfg: FailurePredictionConfig, seed: int = 0, what: str = "failure_prediction") -> list[TaskItem]:
    """Every prompt of every task, a prompt listed twice kept once (train and test stay disjoint)."""
    seen: set[str] = set()
    items = []
    for task in load_tasks(_task_options(cfg, seed), what):
        for item in task.items:
            if item.prompt not in seen:
                seen.add(item.prompt)
                items.append(item)
    return items


class FailurePrediction(Analyzer):
    name = "failure_prediction"
    family = "safety"
    description = "predict from internals whether the model's answer is wrong; AUROC/ECE vs top-1 probability"
    Config = FailurePredictionConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: FailurePredictionConfig) -> FailurePredictionConfig:
        n = self.name
        families = list(check_families(cfg.families, f"{n}.families"))
        layers = None
        if "probe" in families:
            chosen = cfg.probe_layers if cfg.probe_layers is not None else default_probe_layers(info.n_layers)
            if not chosen:
                raise ConfigError(f"{n}.probe_layers: empty; give layers such as [15] or null for the default")
            layers = check_layers(info, chosen, f"{n}.probe_layers")
        if not 0.0 < cfg.test_fraction < 1.0:
            raise ConfigError(f"{n}.test_fraction must be in (0, 1), got {cfg.test_fraction}; e.g. 0.3")
        for key in ("c_grid", "probe_c_grid"):
            grid = getattr(cfg, key)
            if not grid or any(not isinstance(c, (int, float)) or c <= 0 for c in grid):
                raise ConfigError(f"{n}.{key}: {grid} must be a non-empty list of positive numbers, e.g. [0.1, 1.0]")
        for key, low in (("folds", 2), ("n_bins", 2), ("max_new_tokens", 1), ("n_bootstrap", 0), ("top_features", 1)):
            if getattr(cfg, key) < low:
                raise ConfigError(f"{n}.{key} must be >= {low}, got {getattr(cfg, key)}")
        items = task_items(cfg, what=n)  # unknown tasks, files without answers: before weights load
        need = max(10, 2 * cfg.folds)
        if len(items) < need:
            raise ConfigError(
                f"{n}: {len(items)} prompts; a train/held-out split with {cfg.folds} folds needs >= {need}"
            )
        return FailurePredictionConfig(**{**cfg.__dict__, "families": families, "probe_layers": layers})

    def estimate(self, info: ModelInfo, cfg: FailurePredictionConfig, workload):
        """One feature pass per batch (the residual stream of every layer, every attention pattern, the
        logit lens at each prompt's last token), the greedy answers (cached, up to max_new_tokens),
        and the predictors: scikit-learn logistic fits over folds x C values, the per-layer probes on
        the residual vectors, the paired bootstrap."""
        from interpsuite.estimate_analyzers import probe_fit_macs

        from .failure import default_probe_layers

        items = task_items(cfg, workload.seed, self.name)
        lengths = workload.token_lengths(prepared_prompts(workload.model.tokenizer, items))
        layers = range(info.n_layers)
        probe_layers = cfg.probe_layers if cfg.probe_layers is not None else default_probe_layers(info.n_layers)
        capture = [f"blocks.{layer}.{site}" for layer in layers for site in ("resid_post", "attn.pattern")]
        cost = workload.forward_batches(lengths, logits="last", capture=capture)
        cost = cost + workload.macs(len(lengths) * info.n_layers * info.d_model * info.vocab_size)  # the logit lens
        for rows in workload.batches(lengths):
            cost = cost + workload.generate(len(rows), max(rows), cfg.max_new_tokens)
        n, d = len(items), info.d_model
        fits = cfg.folds * len(cfg.c_grid) * 4 + cfg.folds * len(cfg.probe_c_grid) * len(probe_layers)
        cost = cost + workload.macs(probe_fit_macs(fits, n, d, 2) + cfg.n_bootstrap * n * 20)
        saved = workload.disk(8 * d * len(probe_layers) * 4) if cfg.save_predictor else workload.disk(0)
        return cost + saved + workload.figures(3, 5) + workload.table(n, 12)

    def run(self, ctx: RunContext) -> Result:
        cfg: FailurePredictionConfig = self.cfg
        model = ctx.model
        items = task_items(cfg, ctx.seed, self.name)
        prompts = prepared_prompts(model.tokenizer, items)
        data = extract(
            model, prompts, cfg.families, cfg.probe_layers, batch_size=ctx.batch_size,
            max_length=ctx.max_length, progress=ctx.progress,
        )  # fmt: skip
        labelled = label_items(
            model, items, batch_size=ctx.batch_size, max_length=ctx.max_length,
            max_new_tokens=cfg.max_new_tokens, first_tokens=data.top1_ids, progress=ctx.progress,
        )  # fmt: skip
        result = Result()
        accuracy = self._accuracy(result, labelled)
        self._label_checks(result, cfg, labelled, data)
        try:
            evaluation = evaluate(
                data, labelled.failed, families=cfg.families, model=model, test_fraction=cfg.test_fraction,
                c_grid=cfg.c_grid, probe_c_grid=cfg.probe_c_grid, folds=cfg.folds, seed=ctx.seed,
                n_bins=cfg.n_bins, n_boot=cfg.n_bootstrap, groups=labelled.tasks,
            )  # fmt: skip
        except ConfigError as err:  # too few right (or wrong) answers: a finding, not a crash
            return self._undefined(result, labelled, data, accuracy, str(err))
        result.metrics.update(evaluation.metrics)
        examples = self._examples(labelled, data, evaluation)
        per_task = self._per_task(accuracy, examples)
        defined = per_task.dropna(subset=["test_auroc", "test_baseline_auroc"])
        if len(defined):
            weights = defined["n_test"].to_numpy(dtype=float)
            result.metrics["within_task_auroc"] = float(np.average(defined["test_auroc"], weights=weights))
            result.metrics["within_task_baseline_auroc"] = float(
                np.average(defined["test_baseline_auroc"], weights=weights)
            )
        self._checks(ctx, result, cfg, labelled, data, evaluation)
        result.tables.update(
            {
                "examples": examples,
                "feature_sets": evaluation.feature_sets,
                "coefficients": evaluation.coefficients,
                "reliability": evaluation.reliability,
                "task_accuracy": per_task,
                "roc": roc_table(evaluation),
            }
        )
        self._figures(result, ctx, cfg, evaluation, per_task)
        m = evaluation.metrics
        beats = m["auroc_diff_ci_low"] > 0 if math.isfinite(m["auroc_diff_ci_low"]) else False
        result.summary = {
            "tasks": {
                row.task: {"n": int(row.n), "accuracy": row.accuracy, "note": row.note} for row in per_task.itertuples()
            },
            "families": list(cfg.families),
            "probe_layers": list(evaluation.predictor.probe_layers),
            "predictor_c": evaluation.predictor.linear.c,
            "finding": (
                f"held-out AUROC {m['auroc']:.3f} vs top-1-probability baseline {m['baseline_auroc']:.3f} "
                f"(difference {m['auroc_minus_baseline']:+.3f}, 95% bootstrap interval "
                f"[{m['auroc_diff_ci_low']:+.3f}, {m['auroc_diff_ci_high']:+.3f}]): "
                + ("the predictor beats the baseline on this split" if beats else "not shown to beat the baseline")
            ),
            "correctness_rule": "greedy continuation starts with the answer after normalisation (failure_tasks)",
            "predictor_path": self._saved_path,
        }
        return result

    _saved_path: str | None = None

    @staticmethod
    def _accuracy(result: Result, labelled) -> pd.DataFrame:
        frame = pd.DataFrame({"task": labelled.tasks, "correct": 1 - labelled.failed})
        table = frame.groupby("task", sort=False)["correct"].agg(["size", "mean"]).reset_index()
        table.columns = ["task", "n", "accuracy"]
        for row in table.itertuples():
            result.metrics[f"accuracy.{row.task}"] = float(row.accuracy)
        result.metrics["accuracy"] = float(frame["correct"].mean())
        result.metrics["n_examples"] = float(len(frame))
        return table

    @staticmethod
    def _examples(labelled, data, evaluation: Evaluation | None = None) -> pd.DataFrame:
        """One row per prompt: its answer check, features and (with a fitted predictor) its
        split and held-out probabilities."""
        columns = {
            "task": labelled.tasks,
            "prompt": labelled.prompts,
            "answers": [" | ".join(item.answers) for item in labelled.items],
            "continuation": labelled.continuations,
            "correct": 1 - labelled.failed,
            "failed": labelled.failed,
        }
        if evaluation is not None:
            n = len(labelled.items)
            split = np.array(["train"] * n, dtype=object)
            split[evaluation.test] = "test"
            probability = np.full(n, np.nan)
            probability[evaluation.test] = evaluation.test_probability
            baseline = np.full(n, np.nan)
            baseline[evaluation.test] = evaluation.baseline_probability
            columns.update(
                split=split, predicted_failure_probability=probability, baseline_failure_probability=baseline
            )
        return pd.concat([pd.DataFrame(columns), data.features.reset_index(drop=True)], axis=1)

    @staticmethod
    def _per_task(accuracy: pd.DataFrame, examples: pd.DataFrame) -> pd.DataFrame:
        rows = []
        test = examples[examples["split"] == "test"]
        for row in accuracy.itertuples():
            part = test[test["task"] == row.task]
            note = ""
            if row.accuracy in (0.0, 1.0):
                state = "always wrong" if row.accuracy == 0.0 else "always right"
                note = f"the model is {state} on this task: AUROC undefined within it"
            elif part["failed"].nunique() < 2:
                note = "one outcome only in the held-out split: AUROC undefined within it"
            within = (
                auroc(part["failed"].to_numpy(), part["predicted_failure_probability"].to_numpy())
                if not note
                else math.nan
            )
            base = (
                auroc(part["failed"].to_numpy(), part["baseline_failure_probability"].to_numpy())
                if not note
                else math.nan
            )
            rows.append(
                {"task": row.task, "n": row.n, "accuracy": row.accuracy, "n_test": len(part),
                 "n_test_failed": int(part["failed"].sum()),
                 "test_auroc": within, "test_baseline_auroc": base, "note": note}
            )  # fmt: skip
        return pd.DataFrame(rows)

    @staticmethod
    def _label_checks(result: Result, cfg, labelled, data) -> None:
        """Checks that hold whatever the labels: the lens and the two passes agree."""
        if "logit_lens" in cfg.families:
            result.add_check("lens_last_layer_differs_from_model", data.lens_last_layer_mismatches, 0)
        generated = np.array(labelled.generated_first)
        ran = generated >= 0
        first = float(np.mean(generated[ran] != np.array(data.top1_ids)[ran])) if ran.any() else 0.0
        result.add_check("greedy_first_token_differs_from_feature_pass", first, FIRST_TOKEN_MISMATCH_TOLERANCE)
        result.metrics["share_generated"] = float(ran.mean())

    def _undefined(self, result: Result, labelled, data, accuracy: pd.DataFrame, reason: str) -> Result:
        """The model is (almost) always right or always wrong: report accuracy, fit nothing."""
        for key in ("auroc", "auprc", "ece", "baseline_auroc"):
            result.metrics[key] = math.nan
        result.tables["examples"] = self._examples(labelled, data)
        result.tables["task_accuracy"] = accuracy.assign(note="no predictor fitted: " + reason)
        result.summary = {
            "tasks": {row.task: {"n": int(row.n), "accuracy": row.accuracy} for row in accuracy.itertuples()},
            "finding": f"AUROC undefined, no predictor fitted: {reason}",
            "predictor_path": None,
        }
        return result

    def _checks(self, ctx: RunContext, result: Result, cfg, labelled, data, evaluation: Evaluation) -> None:
        predictor = evaluation.predictor
        prob = evaluation.test_probability
        outside = int(np.sum((prob < 0) | (prob > 1) | ~np.isfinite(prob)))
        result.add_check("probabilities_outside_0_1", outside, 0)
        train_prompts = {labelled.prompts[i] for i in evaluation.train}
        overlap = sum(labelled.prompts[i] in train_prompts for i in evaluation.test)
        overlap += len(set(evaluation.train.tolist()) & set(evaluation.test.tolist()))
        result.add_check("train_test_overlap", overlap, 0)
        if not cfg.save_predictor:
            return
        path = ctx.data_dir(self.name) / "predictor"
        predictor.save(path)
        self._saved_path = str(path)
        result.summary["predictor_path"] = str(path)
        loaded = FailurePredictor.load(path, ctx.model)
        test_data = data.subset(evaluation.test)
        again = loaded.score_features(test_data).probability
        result.add_check("reloaded_predictor_max_abs_diff", float(np.max(np.abs(again - prob))), 0.0)
        k = min(RESCORED_PROMPTS, len(evaluation.test))
        prompts = [labelled.prompts[i] for i in evaluation.test[:k]]
        rescored = loaded.score(ctx.model, prompts, batch_size=ctx.batch_size, max_length=ctx.max_length).probability
        result.add_check(
            "score_from_text_max_abs_diff", float(np.max(np.abs(rescored - prob[:k]))), SCORE_PATH_TOLERANCE
        )

    @staticmethod
    def _figures(result: Result, ctx: RunContext, cfg, evaluation: Evaluation, per_task: pd.DataFrame) -> None:
        name = ctx.model.info.name
        n_test = len(evaluation.test)
        result.add_figure(
            "roc",
            plot_roc,
            roc_table(evaluation),
            f"{name}: held-out ROC, failure = wrong answer ({n_test})",
            ctx.style,
        )
        result.add_figure(
            "reliability", plot_reliability, evaluation.reliability, f"{name}: reliability (held out)", ctx.style
        )
        result.add_figure(
            "feature_importance",
            plot_importance,
            evaluation.coefficients,
            evaluation.feature_sets,
            cfg.top_features,
            f"{name}: what carries the signal",
            ctx.style,
        )


def roc_table(evaluation: Evaluation) -> pd.DataFrame:
    """ROC points of the predictor and the baseline (held-out), for redrawing the figure."""
    parts = [
        pd.DataFrame({"predictor": key, "false_positive_rate": fpr, "true_positive_rate": tpr})
        for key, (fpr, tpr) in evaluation.roc.items()
    ]
    return pd.concat(parts, ignore_index=True)


@figure_function
def plot_roc(table: pd.DataFrame, title: str, style: FigureStyle):
    fig, axes = style.figure()
    ax = axes[0, 0]
    for key, part in table.groupby("predictor", sort=False):
        ax.plot(part["false_positive_rate"], part["true_positive_rate"], label=str(key), drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false positive rate (right answers flagged)")
    ax.set_ylabel("true positive rate (wrong answers flagged)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    return fig


@figure_function
def plot_reliability(table: pd.DataFrame, title: str, style: FigureStyle):
    """Observed failure rate against mean predicted probability per bin; bar widths show counts."""
    fig, axes = style.figure(nrows=2, scale=(1.0, 1.4))
    ax, counts = axes[0, 0], axes[1, 0]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for offset, (key, part) in enumerate(table.groupby("predictor", sort=False)):
        filled = part[part["count"] > 0]
        ax.plot(filled["mean_predicted"], filled["observed_failure_rate"], marker="o", markersize=4, label=str(key))
        width = (part["bin_high"] - part["bin_low"]).to_numpy() / 2.2
        counts.bar(part["bin_low"].to_numpy() + width * (0.5 + offset), part["count"], width=width, label=str(key))
    ax.set_xlabel("mean predicted failure probability")
    ax.set_ylabel("observed failure rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    counts.set_xlabel("predicted failure probability (equal-width bins)")
    counts.set_ylabel("held-out examples")
    counts.set_xlim(0, 1)
    return fig


@figure_function
def plot_importance(coefficients: pd.DataFrame, feature_sets: pd.DataFrame, top: int, title: str, style: FigureStyle):
    """Standardised coefficients (largest |value|) and the held-out AUROC of each feature set."""
    fig, axes = style.figure(nrows=2, scale=(1.0, 1.8))
    ax = axes[0, 0]
    head = coefficients.head(top).iloc[::-1]
    ax.barh(
        head["feature"],
        head["standardised_coefficient"],
        color=["C3" if v > 0 else "C0" for v in head["standardised_coefficient"]],
    )
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("standardised coefficient (> 0: raises the failure probability)")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7)
    sets = feature_sets.iloc[::-1]
    bx = axes[1, 0]
    bx.barh(sets["feature_set"], sets["auroc"], color="C2")
    bx.axvline(0.5, color="grey", linestyle="--", linewidth=0.8)
    bx.set_xlim(0, 1)
    bx.set_xlabel("held-out AUROC")
    bx.tick_params(axis="y", labelsize=7)
    return fig


ANALYZERS = [FailurePrediction]
