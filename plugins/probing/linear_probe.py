"""`linear_probe`: which layers hold a property, and how selectively (Hewitt & Liang 2019).

A thin analyzer over two engines: `capture` collects every chosen layer and hook point of a
labelled set in ONE forward pass per batch, and `probes.probe_layers` fits per-layer logistic
probes with splits by text, C chosen on validation, intervals over seeds and a control task.

Tasks are shipped labelled sets (`tasks: [sentiment, pos, ...]`, see data/README.md) and/or a
user's file (`path`, with `level: sequence|token` and field names). Sequence tasks probe one
example per text (`pooling: mean|last`); token tasks probe one example per word
(`token_alignment: mean|first|last` over the word's sub-tokens).

The control task gives each word type a random label. For token tasks the type is the word
itself; for sequence tasks it is the text's last word (lower-cased), the lexical identity a
probe could memorise instead of reading the property. selectivity = accuracy - control
accuracy, per layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

from .capture import ALIGNMENTS, TEXT_POOLINGS, check_block_site, hook_names, pooled_features, word_features
from .labelled import LEVELS, FieldNames, LabelledSet, labelled_sets
from .probes import ProbeConfig, ProbeReport, check_probe_inputs, online_codelength, probe_layers

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def report_best_layer(result, name: str, table, report, control: bool):
    """The probe's best layer, its accuracy, the majority baseline (and selectivity there) as
    metrics `<name>.*`; returns the best row. Shared by every analyzer that reports probe curves."""
    best = table.loc[table["accuracy"].idxmax()]
    result.metrics[f"{name}.best_layer"] = float(best["layer"])
    result.metrics[f"{name}.best_accuracy"] = float(best["accuracy"])
    result.metrics[f"{name}.majority_baseline"] = report.majority_baseline
    if control:
        result.metrics[f"{name}.selectivity_at_best"] = float(best["selectivity"])
    return best


@dataclass
class LinearProbeConfig:
    tasks: list[str] = field(default_factory=lambda: ["sentiment"])  # shipped sets; [] with path = only yours
    path: str | None = None  # your .jsonl/.csv labelled set (probed as task <file stem>)
    level: str = "sequence"  # of `path`: sequence (text + label) | token (words + tags)
    text_field: str = "text"
    label_field: str = "label"
    words_field: str = "words"
    tags_field: str = "tags"
    hook_points: list[str] = field(default_factory=lambda: ["resid_post"])
    layers: list[int] | None = None  # null = every layer
    pooling: str = "mean"  # sequence tasks: mean over the text's tokens | last token
    token_alignment: str = "mean"  # token tasks: mean | first | last sub-token of each word
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    control: bool = True  # control task and selectivity
    solver: str = "batched"  # batched (every layer and C in one torch L-BFGS) | sklearn (one fit each, the reference)
    mdl: bool = False  # MDL online codelength per layer (Voita & Titov 2020)
    max_texts: int | None = None  # first N texts of each set (null = all)


def control_types(labelled: LabelledSet) -> list[str]:
    """The word type of each example for the control task (see the module docstring)."""
    if labelled.level == "token":
        return [word.lower() for row in labelled.words or [] for word in row]
    types = []
    for text in labelled.texts:
        words = _WORD.findall(text)
        types.append(words[-1].lower() if words else text.strip().lower())
    return types


def example_groups(labelled: LabelledSet) -> list[int]:
    if labelled.level == "token":
        return [group for group, row in zip(labelled.groups, labelled.words or [], strict=True) for _ in row]
    return list(labelled.groups)


def _probe_config(cfg: LinearProbeConfig) -> ProbeConfig:
    return ProbeConfig(
        seeds=tuple(int(s) for s in cfg.seeds), c_grid=tuple(float(c) for c in cfg.c_grid), solver=cfg.solver
    )


def load_sets(cfg: LinearProbeConfig, name: str) -> list[LabelledSet]:
    """The configured labelled sets, each checked as the probe engine will check it."""
    fields = FieldNames(cfg.text_field, cfg.label_field, cfg.words_field, cfg.tags_field)
    try:
        sets = labelled_sets(list(cfg.tasks), cfg.path, cfg.level, fields)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None
    config = _probe_config(cfg)
    out = []
    for labelled in sets:
        labelled = labelled.limit(cfg.max_texts)
        check_probe_inputs(
            labelled.example_labels(),
            example_groups(labelled),
            word_types=control_types(labelled) if cfg.control else None,
            config=config,
            what=f"{name} task {labelled.name!r}",
        )
        out.append(labelled)
    return out


def check_text_probe_options(name: str, pooling: str, max_texts: int | None, config: ProbeConfig, options: str) -> None:
    """The options every analyzer that probes one example per text shares (`linear_probe`,
    `safety_concepts`): pooling, a split-sized `max_texts`, seeds and C grid. `options` names
    the analyzer's probe options for the message (e.g. "seeds, c_grid, solver")."""
    if pooling not in TEXT_POOLINGS:
        raise ConfigError(f"{name}.pooling: {pooling!r} is not one of {', '.join(TEXT_POOLINGS)}")
    if max_texts is not None and max_texts < 3:
        raise ConfigError(f"{name}.max_texts: {max_texts}; a train/validation/test split needs at least 3")
    try:
        config.validate()
    except ConfigError as err:
        raise ConfigError(f"{name}: {err} (options {options})") from None


def check_probe_config(info: ModelInfo, cfg: LinearProbeConfig, name: str) -> list[int]:
    if cfg.level not in LEVELS:
        raise ConfigError(f"{name}.level: {cfg.level!r} is not one of {', '.join(LEVELS)}")
    check_text_probe_options(name, cfg.pooling, cfg.max_texts, _probe_config(cfg), "seeds, c_grid, solver")
    if cfg.token_alignment not in ALIGNMENTS:
        raise ConfigError(f"{name}.token_alignment: {cfg.token_alignment!r} is not one of {', '.join(ALIGNMENTS)}")
    if not cfg.hook_points:
        raise ConfigError(f"{name}.hook_points: empty; give per-block sites, e.g. [resid_post]")
    for hook_point in cfg.hook_points:
        check_block_site(info, hook_point, f"{name}.hook_points")
    return check_layers(info, cfg.layers, f"{name}.layers")


@dataclass
class TaskFeatures:
    """Every (hook point, layer) of one labelled set, with what the probe needs beside them."""

    features: dict[tuple[str, int], torch.Tensor]
    labels: list[str]
    groups: list[int]
    word_types: list[str]
    dropped_words: int = 0


def capture_task(
    model: HookedModel,
    labelled: LabelledSet,
    hook_points: list[str],
    layers: list[int],
    *,
    pooling: str = "mean",
    alignment: str = "mean",
    batch_size: int = 8,
    max_length: int | None = 128,
    progress=None,
) -> TaskFeatures:
    """One capture pass over the set for every hook point and layer (the probing hot path)."""
    keys = [(hook_point, layer) for hook_point in hook_points for layer in layers]
    hooks = [hook_names([layer], hook_point)[0] for hook_point, layer in keys]
    extra = {"progress": progress} if progress is not None else {}
    if labelled.level == "sequence":
        feats, _ = pooled_features(
            model, labelled.texts, hooks, pooling, batch_size=batch_size, max_length=max_length,
            desc=f"linear_probe {labelled.name}", **extra,
        )  # fmt: skip
        return TaskFeatures(
            dict(zip(keys, feats, strict=True)),
            labelled.example_labels(),
            list(labelled.groups),
            control_types(labelled),
        )
    words = word_features(
        model, labelled.words or [], hooks, alignment, batch_size=batch_size, max_length=max_length,
        desc=f"linear_probe {labelled.name}", **extra,
    )  # fmt: skip
    tags = labelled.tags or []
    return TaskFeatures(
        dict(zip(keys, words.features, strict=True)),
        [tags[t][w] for t, w in zip(words.text_ids, words.word_index, strict=True)],
        [labelled.groups[t] for t in words.text_ids],
        [word.lower() for word in words.words],
        words.dropped,
    )


class LinearProbe(Analyzer):
    name = "linear_probe"
    family = "probing"
    description = "per-layer logistic probes with control tasks and selectivity (sequence or token labels)"
    Config = LinearProbeConfig

    def validate(self, info: ModelInfo, cfg: LinearProbeConfig) -> LinearProbeConfig:
        layers = check_probe_config(info, cfg, self.name)
        load_sets(cfg, self.name)  # bad files, fields, tags and class counts: before weights load
        return LinearProbeConfig(**{**cfg.__dict__, "layers": layers})

    def estimate(self, info: ModelInfo, cfg: LinearProbeConfig, workload):
        """Per labelled set: one capture pass (every layer, last logit only), a few texts again for the
        one-pass check, and the batched probes (layers x C values x (task + control) x seeds)."""
        from interpsuite.estimate_analyzers import LBFGS_ITERATIONS, probe_fit_macs

        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        names = [f"blocks.{L}.{h}" for h in cfg.hook_points for L in layers]
        d = max(workload.width_of(n) for n in names)
        cost = workload.figures(0)
        for labelled in load_sets(cfg, self.name):
            lengths = workload.token_lengths(labelled.texts)
            n = len(labelled.example_labels())
            cost = cost + workload.forward_batches(lengths, logits=1, capture=names).hold(4 * n * d * len(names) * 3)
            cost = cost + workload.forward_batches(lengths[:4], logits=1, capture=names[-1:])
            problems = len(names) * len(cfg.c_grid) * (1 + int(cfg.control)) * len(cfg.seeds)
            cost = cost + workload.macs(probe_fit_macs(problems, n, d, len(labelled.classes)))
            cost = cost + workload.figures(len(cfg.hook_points), len(cfg.hook_points) * (1 + int(cfg.control)))
        return cost.note(f"probes: {LBFGS_ITERATIONS} L-BFGS iterations assumed (solver: {cfg.solver})")

    def run(self, ctx: RunContext) -> Result:
        cfg: LinearProbeConfig = self.cfg
        layers = cfg.layers if cfg.layers is not None else list(range(ctx.model.info.n_layers))
        result = Result()
        tables = []
        summary: dict = {"tasks": {}, "layers": layers, "hook_points": list(cfg.hook_points)}
        for labelled in load_sets(cfg, self.name):
            task = capture_task(
                ctx.model, labelled, list(cfg.hook_points), layers, pooling=cfg.pooling,
                alignment=cfg.token_alignment, batch_size=ctx.batch_size, max_length=ctx.max_length,
                progress=ctx.progress,
            )  # fmt: skip
            self._check_one_pass(ctx, result, labelled, task, cfg)
            report = probe_layers(
                task.features,
                task.labels,
                task.groups,
                word_types=task.word_types if cfg.control else None,
                config=_probe_config(cfg),
            )
            table = curve_table(labelled.name, report)
            if cfg.mdl:
                table = self._add_mdl(table, task, ctx.seed)
            tables.append(table)
            self._report_task(result, labelled, report, table, task, ctx, cfg)
            summary["tasks"][labelled.name] = {
                "level": labelled.level,
                "n_texts": len(labelled.texts),
                "n_examples": report.n_examples,
                "classes": report.classes,
                "majority_baseline": report.majority_baseline,
                "dropped_words": task.dropped_words,
                "source": labelled.source,
            }
        result.tables["probe_curves"] = pd.concat(tables, ignore_index=True)
        summary["pooling"] = cfg.pooling
        summary["token_alignment"] = cfg.token_alignment
        result.summary = summary
        return result

    @staticmethod
    def _check_one_pass(ctx: RunContext, result: Result, labelled: LabelledSet, task: TaskFeatures, cfg) -> None:
        """The fast path's premise: a layer captured with all the others equals it captured alone."""
        hook_point, layer = next(reversed(task.features))
        alone = capture_task(
            ctx.model, labelled.limit(min(4, len(labelled.texts))), [hook_point], [layer],
            pooling=cfg.pooling, alignment=cfg.token_alignment, batch_size=ctx.batch_size,
            max_length=ctx.max_length,
        )  # fmt: skip
        single = alone.features[(hook_point, layer)]
        together = task.features[(hook_point, layer)][: single.shape[0]]
        scale = float(single.abs().max()) if single.numel() else 0.0
        error = float((single - together).abs().max()) / scale if scale > 0 else 0.0
        result.add_check(f"{labelled.name}.one_pass_vs_single_capture_rel_error", error, 1e-4)

    @staticmethod
    def _add_mdl(table: pd.DataFrame, task: TaskFeatures, seed: int) -> pd.DataFrame:
        bits, compression = [], []
        for hook_point, layer in zip(table["hook_point"], table["layer"], strict=True):
            mdl = online_codelength(task.features[(hook_point, layer)], task.labels, groups=task.groups, seed=seed)
            bits.append(mdl.codelength_bits)
            compression.append(mdl.compression)
        return table.assign(mdl_bits=bits, mdl_compression=compression)

    def _report_task(self, result, labelled, report: ProbeReport, table, task, ctx, cfg) -> None:
        name = labelled.name
        report_best_layer(result, name, table, report, cfg.control)
        if cfg.control:
            result.metrics[f"{name}.max_selectivity"] = float(table["selectivity"].max())
            # Selectivity is a finding (a metric, and the figure): a probe may read no more than a
            # type-memorising one, as measured. What is checked is that the control does its job:
            # learnable above the majority class, or it would subtract nothing.
            margin = float((table["control_accuracy"] - table["chance"]).mean())
            result.add_check(f"{name}.control_above_chance", margin, 0.0, mode="min")
        from .plots import plot_probe_curves

        for hook_point, frame in table.groupby("hook_point", sort=False):
            suffix = "" if len(cfg.hook_points) == 1 else f"_{hook_point.replace('.', '_')}"
            title = f"{ctx.model.info.name} {hook_point}: {name} probe ({report.n_examples} examples)"
            result.add_figure(f"{name}{suffix}_by_layer", plot_probe_curves, frame, title, ctx.style)


def curve_table(task: str, report: ProbeReport) -> pd.DataFrame:
    """One row per (hook point, layer): the columns the comparison report overlays."""
    table = report.table()
    keys = table.pop("layer")
    table.insert(0, "task", task)
    table.insert(1, "hook_point", [k[0] for k in keys])
    table.insert(2, "layer", [int(k[1]) for k in keys])
    return table


ANALYZERS = [LinearProbe]
