"""`pruning_impact`: what pruning costs, measured, for each criterion and sparsity level.

A thin analyzer over the engines: `criteria.importance_scores` scores each criterion once on
calibration text, `Scores.plan` makes one `PruningPlan` per sparsity level, and
`impact.evaluate_plans` measures every plan on the evaluation text (perplexity, and optionally
the IOI logit difference and factual recall) with bootstrap intervals over texts. The model is
never copied: unstructured plans are applied as exact in-place masks one at a time, and
structured plans (neurons, heads) share batched sweeps.

Calibration and evaluation text are disjoint by construction: calibration comes from
`calibration` (Python's documentation by default), evaluation from the run's inputs or the
shipped English corpus (`eval_texts`); a text in both is a check failure.

This is where Wanda's known answer is reproduced (Sun et al. 2023: at 50% unstructured
sparsity, pruning by |W| x ||X|| keeps perplexity far lower than pruning by |W|). The metrics
report both perplexities whichever way they fall.

Checks: sparsity 0 reproduces the unpruned perplexity exactly; the achieved unstructured sparsity
equals the requested one within one element per row; the sweep path equals the masked path for
structured plans; calibration and evaluation share no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

GRANULARITIES = ("unstructured", "neurons", "heads")
CALIBRATION_SOURCES = ("python_docs", "inputs", "lens_corpus")
EVAL_SOURCES = ("inputs", "lens_corpus")


@dataclass
class PruningImpactConfig:
    criteria: list[str] = field(default_factory=lambda: ["magnitude", "wanda"])
    granularity: str = "unstructured"  # unstructured | neurons | heads
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    scope: str | None = None  # null = the granularity's default (per_row / per_layer)
    calibration: str = "python_docs"  # python_docs | lens_corpus | inputs: text for data-aware criteria
    calibration_texts: int = 64  # first N calibration texts
    eval_texts: str = "inputs"  # inputs (the run's texts) | lens_corpus (shipped English paragraphs)
    tasks: list[str] = field(default_factory=lambda: ["perplexity"])  # perplexity | ioi | facts
    n_boot: int = 1000  # bootstrap resamples of the evaluation units (0 = no intervals)
    n_pairs: int = 64  # IOI / factual prompts


def shipped_corpus() -> list[str]:
    """The mechanistic plugin's shipped English paragraphs (the tuned lens's corpus), one text per line."""
    from ..mechanistic.tuned_lens import CORPUS_PATH, read_lines

    return read_lines(CORPUS_PATH)


def calibration_texts(source: str, run_texts: list[str], n: int) -> list[str]:
    if source == "python_docs":
        from ..sae.corpus import python_docs_texts

        texts = python_docs_texts()
    elif source == "lens_corpus":
        texts = shipped_corpus()
    else:
        texts = list(run_texts)
    return texts[:n]


class PruningImpact(Analyzer):
    name = "pruning_impact"
    family = "pruning"
    description = "perplexity (and IOI, facts) against sparsity per criterion with bootstrap bands; Wanda vs magnitude"
    Config = PruningImpactConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: PruningImpactConfig) -> None:
        from .criteria import CRITERIA
        from .impact import TASKS
        from .plan import check_sparsity

        what = self.name
        if not info.is_causal:
            raise ConfigError(f"{what}: {info.name} is an encoder; perplexity needs a causal LM (e.g. model=smollm2)")
        if cfg.granularity not in GRANULARITIES:
            raise ConfigError(f"{what}.granularity: {cfg.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        valid = CRITERIA[cfg.granularity]
        unknown = [c for c in cfg.criteria if c not in valid]
        if unknown or not cfg.criteria:
            raise ConfigError(
                f"{what}.criteria: {unknown or '[]'} for {cfg.granularity}; choose from {', '.join(valid)}"
            )
        if not cfg.sparsities:
            raise ConfigError(f"{what}.sparsities is empty; give levels in [0, 1), e.g. [0, 0.25, 0.5]")
        for level in cfg.sparsities:
            try:
                check_sparsity(level)
            except ConfigError as err:
                raise ConfigError(f"{what}.sparsities: {err}") from None
        bad = [t for t in cfg.tasks if t not in TASKS]
        if bad or not cfg.tasks:
            raise ConfigError(f"{what}.tasks: {bad or '[]'}; choose from {', '.join(TASKS)}")
        if cfg.calibration not in CALIBRATION_SOURCES:
            raise ConfigError(f"{what}.calibration: {cfg.calibration!r}; choose from {', '.join(CALIBRATION_SOURCES)}")
        if cfg.eval_texts not in EVAL_SOURCES:
            raise ConfigError(f"{what}.eval_texts: {cfg.eval_texts!r}; choose from {', '.join(EVAL_SOURCES)}")
        if cfg.calibration == cfg.eval_texts:
            raise ConfigError(
                f"{what}: calibration and evaluation text are both {cfg.calibration!r}; they must be disjoint "
                "(Wanda's comparison calibrates on one text and measures on another)"
            )
        if cfg.calibration_texts < 1 or cfg.n_pairs < 1 or cfg.n_boot < 0:
            raise ConfigError(f"{what}: calibration_texts and n_pairs must be >= 1 and n_boot >= 0")

    def estimate(self, info: ModelInfo, cfg: PruningImpactConfig, workload):
        """Each criterion's scores on the calibration texts, then every task evaluated on the unpruned
        model and once per (criterion, sparsity) plan (the model pruned in place, all logits)."""
        from interpsuite.estimate_analyzers import importance_cost, module_shapes

        calibration = workload.token_lengths(calibration_texts(cfg.calibration, workload.texts, cfg.calibration_texts))
        evaluation = workload.texts if cfg.eval_texts == "inputs" else shipped_corpus()
        cost = workload.figures(len(cfg.tasks))
        for criterion in cfg.criteria:
            layers = None
            if criterion == "ablation":
                per_layer = info.d_mlp if cfg.granularity == "neurons" else info.n_heads
                layers = [layer for layer in range(info.n_layers) for _ in range(per_layer)]
            cost = cost + importance_cost(workload, criterion, cfg.granularity, calibration, layers)
        plans = len(cfg.criteria) * len(set(cfg.sparsities))
        lengths = workload.token_lengths(evaluation)
        per_eval = workload.forward_batches(lengths) if "perplexity" in cfg.tasks else workload.figures(0)
        for task in ("ioi", "facts"):
            if task in cfg.tasks:
                per_eval = per_eval + workload.forward_batches([16] * cfg.n_pairs, logits=1)
        weights = info.n_layers * sum(m * n for m, n in module_shapes(info))
        masking = workload.macs(plans * 8 * weights)  # ranking each row's weights and masking them
        return cost + per_eval.times(plans + 1) + masking + workload.macs(cfg.n_boot * len(lengths) * plans)

    def run(self, ctx: RunContext) -> Result:
        from .criteria import importance_scores
        from .impact import evaluate_plans
        from .impact_plots import plot_impact_curves

        cfg: PruningImpactConfig = self.cfg
        model = ctx.model
        calibration = calibration_texts(cfg.calibration, ctx.inputs.texts, cfg.calibration_texts)
        evaluation = list(ctx.inputs.texts) if cfg.eval_texts == "inputs" else shipped_corpus()
        result = Result()
        result.add_check("calibration_eval_overlap", len(set(calibration) & set(evaluation)), 0)
        levels = sorted(set(cfg.sparsities))
        plans, worst_row = [], 0.0
        for criterion in cfg.criteria:  # scores once per criterion, one plan per level
            scores = importance_scores(model, criterion, cfg.granularity, calibration, batch_size=ctx.batch_size,
                                       max_length=ctx.max_length, progress=ctx.progress)  # fmt: skip
            for level in levels:
                plan = scores.plan(model, level, cfg.scope)
                plans.append(plan)
                if cfg.granularity == "unstructured" and plan.masks:
                    worst_row = max(worst_row, max(plan.row_errors().values(), default=0.0))
        if cfg.granularity == "unstructured":
            result.add_check("achieved_sparsity_row_error_elements", worst_row, 1.0)
        impact = evaluate_plans(
            model, plans, evaluation, tasks=tuple(cfg.tasks), batch_size=ctx.batch_size, max_length=ctx.max_length,
            n_boot=cfg.n_boot, seed=ctx.seed, n_pairs=cfg.n_pairs, progress=ctx.progress,
        )  # fmt: skip
        result.checks.update(impact.checks)
        table = impact.table
        result.tables["impact"] = table
        result.tables["baseline"] = impact.baseline
        for task in cfg.tasks:
            curve = impact.curve(task)
            result.add_figure(f"impact_{task}", plot_impact_curves, curve, task, model.info.name,
                              cfg.granularity, ctx.style)  # fmt: skip
            result.metrics[f"{task}.baseline"] = impact.baseline_value(task)
            for row in table[table["task"] == task].to_dict("records"):
                result.metrics[f"{task}.{row['criterion']}.{row['sparsity']:g}"] = float(row["value"])
        result.summary = {
            "granularity": cfg.granularity,
            "criteria": list(cfg.criteria),
            "sparsities": levels,
            "calibration": f"{cfg.calibration} ({len(calibration)} texts)",
            "evaluation": f"{cfg.eval_texts} ({len(evaluation)} texts)",
            "plans": len(plans),
        }
        return result


ANALYZERS = [PruningImpact]
