"""`safety_concepts`: where harmful intent and toxic language are linearly readable, and steering along them.

For each concept (shipped: `harmful_intent` = harmful vs benign statements of intent,
`toxicity` = rude/insulting vs neutral remarks; or your labelled file with two classes):

* Per-layer probes: the probing family's engines, reused as they are. `capture.pooled_features`
  collects every layer in ONE forward pass per batch (pooling `mean` over real tokens or
  `last`), and `probes.probe_layers` fits logistic probes with splits by text, C chosen on
  validation, intervals over seeds and the control task of `linear_probe` (each text's last
  word gets a random label; selectivity = accuracy - control accuracy).
* Concept direction per layer: `concepts.diff_of_means` (mean of the positive class minus the
  negative's, over all texts of the set), unscaled, so coefficient 1 adds the whole class-mean
  gap. Its cosine with the probe's weights is reported (a finding, not a check).
* Steering: the direction of the steering layer (default n_layers // 3, as in `steering`) is
  added at every position with each coefficient while the model reads neutral prompts
  followed by short continuations typical of each class (shipped `steering_prompts.jsonl`
  and `continuations.jsonl`). The measured effect is the mean log-probability per token of
  the continuations of each class; all coefficients run as ONE `model.sweep` (one item per
  coefficient). The gap (positive class - negative class) should rise with the coefficient.

Directions are saved as `<run dir>/data/safety_concepts/<concept>_direction.safetensors`
(the steering layer's hook), readable by `steering` with `direction_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.data import json_lines
from interpsuite.directions import write_direction
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

from ..probing.capture import check_block_site, hook_names, pooled_features
from ..probing.concepts import binary_mask, cosine, diff_of_means, projection_gap
from ..probing.labelled import FieldNames, LabelledSet, read_labelled
from ..probing.linear_probe import check_text_probe_options, control_types, curve_table, report_best_layer
from ..probing.plots import plot_probe_curves
from ..probing.probes import ProbeConfig, check_probe_inputs, probe_layers

DATA_DIR = Path(__file__).parent / "data"
#: shipped concept -> (file, positive label)
SHIPPED: dict[str, tuple[str, str]] = {
    "harmful_intent": ("harmful_intent.jsonl", "harmful"),
    "toxicity": ("toxicity.jsonl", "toxic"),
}
PROMPTS_FILE = DATA_DIR / "steering_prompts.jsonl"
CONTINUATIONS_FILE = DATA_DIR / "continuations.jsonl"
SITES = ("resid_pre", "resid_post", "attn.out", "mlp.out")
#: the sweep's coefficient 0 against a plain forward (mean log-prob per token)
CLEAN_TOLERANCE = 1e-5
#: the largest coefficient re-run as a plain forward
STEERED_TOLERANCE = 1e-4


@dataclass
class SafetyConceptsConfig:
    concepts: list[str] = field(default_factory=lambda: ["harmful_intent", "toxicity"])  # shipped sets
    path: str | None = None  # your .jsonl/.csv labelled set (two classes), probed as concept <file stem>
    positive_label: str | None = None  # the class of `path` the direction points to (required with path)
    text_field: str = "text"
    label_field: str = "label"
    hook_point: str = "resid_post"  # per-block site probed, and where steering adds the direction
    layers: list[int] | None = None  # probed layers; null: every layer
    pooling: str = "mean"  # mean over the text's tokens | last token
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    control: bool = True  # control task (random label per last word) and selectivity
    max_texts: int | None = None  # first N texts of each set (null: all)
    steer: bool = True
    steer_layer: int | None = None  # null: n_layers // 3
    coefficients: list[float] = field(default_factory=lambda: [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0])
    prompts_path: str | None = None  # null: shipped steering_prompts.jsonl ({"concept", "text"})
    continuations_path: str | None = None  # null: shipped continuations.jsonl ({"concept", "label", "text"})
    max_prompts: int = 8  # neutral prompts per concept
    max_continuations: int = 8  # continuations per class
    sweep_batch_size: int = 64


@dataclass
class SteerSet:
    """Neutral prompts and continuations of each class of one concept."""

    prompts: list[str]
    continuations: dict[str, list[str]]


def load_concepts(cfg: SafetyConceptsConfig, what: str) -> list[tuple[LabelledSet, str]]:
    """(labelled set, positive label) of every configured concept, checked as the probe will check them."""
    fields = FieldNames(cfg.text_field, cfg.label_field)
    out = []
    specs = []
    for concept in cfg.concepts:
        if concept not in SHIPPED:
            raise ConfigError(
                f"{what}: unknown concept {concept!r}; shipped: {', '.join(SHIPPED)} (or give path=<file>)"
            )
        specs.append((DATA_DIR / SHIPPED[concept][0], concept, SHIPPED[concept][1]))
    if cfg.path:
        if not cfg.positive_label:
            raise ConfigError(f"{what}: path is set but positive_label is not; name the class the direction points to")
        specs.append((Path(cfg.path), Path(cfg.path).stem, cfg.positive_label))
    if not specs:
        raise ConfigError(f"{what}: no concepts; give concepts: [harmful_intent, toxicity] and/or path=<file>")
    config = probe_config(cfg)
    for file, name, positive in specs:
        try:
            labelled = read_labelled(file, "sequence", fields, name=name)
        except ConfigError as err:
            raise ConfigError(f"{what}: {err}") from None
        if cfg.max_texts is not None:
            labelled = labelled.limit(cfg.max_texts)
        classes = labelled.classes
        if len(classes) != 2:
            raise ConfigError(
                f"{what}: concept {name!r} has classes {classes}; a concept direction needs exactly two "
                "(e.g. harmful and benign)"
            )
        if positive not in classes:
            raise ConfigError(f"{what}: positive_label {positive!r} is not a class of {name!r} ({classes})")
        check_probe_inputs(
            labelled.labels or [],
            list(labelled.groups),
            word_types=control_types(labelled) if cfg.control else None,
            config=config,
            what=f"{what} concept {name!r}",
        )
        out.append((labelled, positive))
    return out


def probe_config(cfg: SafetyConceptsConfig) -> ProbeConfig:
    return ProbeConfig(seeds=tuple(int(s) for s in cfg.seeds), c_grid=tuple(float(c) for c in cfg.c_grid))


def _records(path: Path, what: str, fields: tuple[str, ...]) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise ConfigError(f"{what}: {str(path)!r} does not exist or is not a file")
    rows = json_lines(path.read_text(encoding="utf-8-sig"), path.name)
    if not rows:
        raise ConfigError(f"{what}: {path.name} has no records")
    for where, record in rows:
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: each line must be a JSON object with fields {', '.join(fields)}")
        for name in fields:
            if not isinstance(record.get(name), str) or not record[name].strip():
                have = ", ".join(sorted(record)) or "(none)"
                raise ConfigError(f"{where}: no text field {name!r} (fields: {have}); every line needs {fields}")
    return rows


def load_steer_sets(
    cfg: SafetyConceptsConfig, concepts: list[tuple[LabelledSet, str]], what: str
) -> tuple[dict[str, SteerSet], list[str]]:
    """Prompts and continuations of every concept that has them; notes for those that do not."""
    prompts = _records(Path(cfg.prompts_path or PROMPTS_FILE).expanduser(), f"{what}.prompts_path", ("concept", "text"))
    conts = _records(
        Path(cfg.continuations_path or CONTINUATIONS_FILE).expanduser(),
        f"{what}.continuations_path",
        ("concept", "label", "text"),
    )
    sets: dict[str, SteerSet] = {}
    notes = []
    for labelled, _ in concepts:
        name = labelled.name
        mine = [r["text"] for _, r in prompts if r["concept"] == name][: cfg.max_prompts]
        by_class = {
            c: [r["text"] for _, r in conts if r["concept"] == name and r["label"] == c] for c in labelled.classes
        }
        if not mine or not all(by_class.values()):
            notes.append(
                f"concept {name!r}: no steering (needs prompts and continuations of both classes {labelled.classes})"
            )
            continue
        sets[name] = SteerSet(mine, {c: v[: cfg.max_continuations] for c, v in by_class.items()})
    return sets, notes


# --- the continuation log-probability ------------------------------------------------------------
def pair_batch(model: HookedModel, prompts: list[str], continuations: list[str]) -> tuple[TokenBatch, torch.Tensor]:
    """Every (prompt, continuation) as one right-padded row: prompt tokens then continuation tokens
    (tokenized apart, so the boundary is exact); and a [B, T] mask of the continuation positions."""
    tok = model.tokenizer
    rows, starts = [], []
    for prompt in prompts:
        head = tok(prompt)["input_ids"]
        for cont in continuations:
            tail = tok(cont, add_special_tokens=False)["input_ids"]
            if not tail:
                raise ConfigError(f"safety_concepts: continuation {cont!r} has no tokens")
            rows.append(head + tail)
            starts.append(len(head))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        targets[i, start : len(row)] = True
    tokens = [[] for _ in rows]
    batch = TokenBatch(ids, mask, tokens, list(range(len(rows)))).to(model.device)
    return batch, targets.to(model.device)


def continuation_metric(batch: TokenBatch, targets: torch.Tensor):
    """A sweep metric: each row's mean log-probability per continuation token."""

    def metric(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
        k = output.shape[0] // batch.size
        ids = batch.input_ids.repeat(k, 1).to(output.device)
        wanted = targets.repeat(k, 1).to(output.device)[:, 1:]
        logp = output[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]
        return (logp * wanted).sum(1) / wanted.sum(1)

    return metric


class SafetyConcepts(Analyzer):
    name = "safety_concepts"
    family = "safety"
    description = "Harmful-intent and toxicity: per-layer probes, concept directions and steering of continuations"
    Config = SafetyConceptsConfig

    def validate(self, info: ModelInfo, cfg: SafetyConceptsConfig) -> SafetyConceptsConfig:
        what = self.name
        check_block_site(info, cfg.hook_point, f"{what}.hook_point")
        if cfg.steer and cfg.hook_point not in SITES:
            raise ConfigError(f"{what}.hook_point: steering adds at {', '.join(SITES)}; {cfg.hook_point!r} is not one")
        check_text_probe_options(what, cfg.pooling, cfg.max_texts, probe_config(cfg), "seeds, c_grid")
        layers = check_layers(info, cfg.layers, f"{what}.layers")
        concepts = load_concepts(cfg, what)
        # an encoder has no next-token log-probabilities to steer: probes and directions only
        # (run() says so in the summary's notes)
        steer = bool(cfg.steer and info.is_causal)
        if steer:
            check_layers(info, [cfg.steer_layer if cfg.steer_layer is not None else info.n_layers // 3], what)
            if not cfg.coefficients:
                raise ConfigError(f"{what}.coefficients is empty; give e.g. [-4, -2, 0, 2, 4]")
            for option in ("max_prompts", "max_continuations", "sweep_batch_size"):
                if getattr(cfg, option) < 1:
                    raise ConfigError(f"{what}.{option} must be >= 1, got {getattr(cfg, option)}")
            load_steer_sets(cfg, concepts, what)
        return SafetyConceptsConfig(**{**cfg.__dict__, "layers": layers, "steer": steer})

    def estimate(self, info: ModelInfo, cfg: SafetyConceptsConfig, workload):
        """Per concept: one capture pass over its labelled texts (every layer), the batched probes
        (layers x C values x (task + control) x seeds), and (causal LMs, with steer) one sweep of
        every coefficient over each (prompt, continuation) row plus two plain passes (all logits)."""
        from interpsuite.estimate_analyzers import probe_fit_macs

        layers = cfg.layers if cfg.layers is not None else list(range(info.n_layers))
        steer_layer = cfg.steer_layer if cfg.steer_layer is not None else info.n_layers // 3
        concepts = load_concepts(cfg, self.name)
        steer_sets = load_steer_sets(cfg, concepts, self.name)[0] if cfg.steer and info.is_causal else {}
        hooks = hook_names(layers, cfg.hook_point)
        d = workload.width_of(hooks[0])
        cost = workload.figures(len(concepts) + int(bool(steer_sets)), len(concepts) * 2 + len(steer_sets))
        coefficients = len({float(c) for c in [*cfg.coefficients, 0.0]})
        for labelled, _ in concepts:
            cost = cost + workload.forward_texts(labelled.texts, logits=1, capture=hooks)
            problems = len(layers) * len(cfg.c_grid) * (1 + int(cfg.control)) * len(cfg.seeds)
            cost = cost + workload.macs(probe_fit_macs(problems, len(labelled.texts), d, 2))
            steer = steer_sets.get(labelled.name)
            if steer is not None:
                conts = [c for texts in steer.continuations.values() for c in texts]
                rows = workload.token_lengths([p + " " + c for p in steer.prompts for c in conts], None)
                starts = [(steer_layer, 0)] * coefficients
                cost = cost + workload.sweep(len(rows), max(rows), starts, max(cfg.sweep_batch_size, len(rows)))
                cost = cost + workload.forward(len(rows), max(rows), count=2)
        return cost

    def run(self, ctx: RunContext) -> Result:
        cfg: SafetyConceptsConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        layers = list(cfg.layers if cfg.layers is not None else range(info.n_layers))
        concepts = load_concepts(cfg, self.name)
        steer_layer = cfg.steer_layer if cfg.steer_layer is not None else info.n_layers // 3
        steer_layer = check_layers(info, [steer_layer], self.name)[0]
        steer_sets, notes = load_steer_sets(cfg, concepts, self.name) if cfg.steer else ({}, [])
        if not info.is_causal:
            notes.append(f"steering skipped: {info.name} is an encoder (no next-token log-probabilities to steer)")
        result = Result()
        curves, steer_tables = [], []
        summary: dict = {"concepts": {}, "hook_point": cfg.hook_point, "pooling": cfg.pooling, "notes": notes}
        hooks = hook_names(layers, cfg.hook_point)
        for labelled, positive in concepts:
            name = labelled.name
            feats, _ = pooled_features(
                model, labelled.texts, hooks, cfg.pooling, batch_size=ctx.batch_size, max_length=ctx.max_length,
                progress=ctx.progress, desc=f"{self.name} {name}",
            )  # fmt: skip
            features = dict(zip(layers, feats, strict=True))
            report = probe_layers(
                {(cfg.hook_point, layer): x for layer, x in features.items()},
                labelled.labels or [],
                list(labelled.groups),
                word_types=control_types(labelled) if cfg.control else None,
                config=probe_config(cfg),
            )
            mask = binary_mask(labelled.labels or [], positive)
            directions = {layer: diff_of_means(x, mask) for layer, x in features.items()}
            table = curve_table(name, report)
            table["separation"] = [projection_gap(features[layer], mask, directions[layer]) for layer in layers]
            table["cos_probe_diff_means"] = [
                cosine(
                    sign_to(report.layer((cfg.hook_point, layer)).direction, report.classes, positive),
                    directions[layer],
                )
                for layer in layers
            ]
            table["direction_norm"] = [float(np.linalg.norm(directions[layer])) for layer in layers]
            curves.append(table)
            best = report_best_layer(result, name, table, report, cfg.control)
            title = f"{info.name} {cfg.hook_point}: {name} probe ({report.n_examples} texts)"
            result.add_figure(f"{name}_probe_by_layer", plot_probe_curves, table, title, ctx.style)
            concept_summary = {
                "n_texts": len(labelled.texts),
                "classes": report.classes,
                "positive": positive,
                "best_layer": int(best["layer"]),
                "best_accuracy": float(best["accuracy"]),
                "source": labelled.source,
            }
            if name in steer_sets:
                if steer_layer not in features:
                    direction = torch.as_tensor(self._direction_at(ctx, labelled, mask, steer_layer))
                else:
                    direction = torch.as_tensor(directions[steer_layer])
                direction = direction.float().to(model.device)
                hook = f"blocks.{steer_layer}.{cfg.hook_point}"
                saved = write_direction(
                    ctx.data_dir(self.name) / f"{name}_direction.safetensors", direction, hook, model=info.name,
                    concept=name, positive=positive,
                )  # fmt: skip
                frame = self._steer(ctx, result, name, steer_sets[name], hook, direction, positive)
                steer_tables.append(frame)
                concept_summary.update({"steering_hook": hook, "direction_file": str(saved)})
            summary["concepts"][name] = concept_summary
        result.tables["probe_curves"] = pd.concat(curves, ignore_index=True)
        if steer_tables:
            steering = pd.concat(steer_tables, ignore_index=True)
            result.tables["steering"] = steering
            result.add_figure(
                "steering",
                plot_steering,
                steering,
                f"{info.name}: steering at layer {steer_layer} ({cfg.hook_point})",
                ctx.style,
            )
            summary["steer_layer"] = steer_layer
        result.summary = summary
        return result

    def _direction_at(self, ctx: RunContext, labelled: LabelledSet, mask: np.ndarray, layer: int) -> np.ndarray:
        """The difference of means at a layer the probes did not cover (one more capture pass)."""
        hook = hook_names([layer], self.cfg.hook_point)
        feats, _ = pooled_features(
            ctx.model, labelled.texts, hook, self.cfg.pooling, batch_size=ctx.batch_size, max_length=ctx.max_length
        )
        return diff_of_means(feats[0], mask)

    def _steer(
        self,
        ctx: RunContext,
        result: Result,
        name: str,
        steer: SteerSet,
        hook: str,
        direction: torch.Tensor,
        positive: str,
    ) -> pd.DataFrame:
        """Mean log-prob per token of each class's continuations at every coefficient: ONE sweep."""
        cfg: SafetyConceptsConfig = self.cfg
        model = ctx.model
        classes = list(steer.continuations)
        negative = next(c for c in classes if c != positive)
        conts = [c for cls in classes for c in steer.continuations[cls]]
        cont_class = [cls for cls in classes for _ in steer.continuations[cls]]
        batch, targets = pair_batch(model, steer.prompts, conts)
        row_class = np.array([cont_class[i % len(conts)] for i in range(batch.size)])
        longest = int(batch.lengths.max())
        if ctx.max_length is not None and longest > ctx.max_length:
            raise AnalyzerError(
                f"{self.name}: a prompt + continuation has {longest} tokens > max_length={ctx.max_length}; raise "
                "max_length or shorten the steering texts"
            )
        coefficients = sorted({float(c) for c in [*cfg.coefficients, 0.0]})
        metric = continuation_metric(batch, targets)
        items = [[Intervention(hook, "add", value=c * direction)] for c in coefficients]
        with torch.no_grad():
            values = (
                model.sweep(
                    batch,
                    items,
                    metric,
                    batch_size=max(cfg.sweep_batch_size, batch.size),
                    progress=lambda chunks: ctx.progress(chunks, f"{self.name} {name} sweep", len(chunks)),
                )
                .double()
                .cpu()
            )  # fmt: skip  [coef, rows]
            clean = metric(model.forward(batch).output, batch).double().cpu()
            top = max(range(len(coefficients)), key=lambda i: (abs(coefficients[i]), coefficients[i]))
            steered = metric(model.forward(batch, interventions=items[top]).output, batch).double().cpu()
        zero = coefficients.index(0.0)
        result.add_check(
            f"{name}.coefficient_zero_matches_clean", float((values[zero] - clean).abs().max()), CLEAN_TOLERANCE
        )
        result.add_check(
            f"{name}.steered_forward_matches_sweep", float((values[top] - steered).abs().max()), STEERED_TOLERANCE
        )
        rows = []
        gaps = []
        for i, c in enumerate(coefficients):
            means = {cls: float(values[i][torch.as_tensor(row_class == cls)].mean()) for cls in classes}
            gap = means[positive] - means[negative]
            gaps.append(gap)
            for cls in classes:
                rows.append({"concept": name, "coefficient": c, "class": cls, "mean_logprob": means[cls]})
            result.metrics[f"{name}.logprob_gap.coef_{c:+g}"] = gap
        gaps_arr = np.array(gaps)
        result.metrics[f"{name}.gap_shift_max_vs_zero"] = float(gaps_arr[-1] - gaps_arr[zero])
        result.metrics[f"{name}.gap_shift_min_vs_zero"] = float(gaps_arr[0] - gaps_arr[zero])
        result.metrics[f"{name}.gap_monotonic"] = float(np.all(np.diff(gaps_arr) >= 0))
        ranks = pd.Series(gaps_arr).rank().to_numpy()
        result.metrics[f"{name}.gap_spearman"] = (
            float(np.corrcoef(np.arange(len(gaps_arr)), ranks)[0, 1]) if ranks.std() > 0 else float("nan")
        )
        result.metrics[f"{name}.direction_norm"] = float(direction.norm())
        return pd.DataFrame(rows)


def sign_to(direction: np.ndarray, classes: list, positive: str) -> np.ndarray:
    """A binary probe's direction points to classes[1]; flip it to point to `positive`."""
    return direction if classes and classes[-1] == positive else -direction


@figure_function
def plot_steering(table: pd.DataFrame, title: str, style: FigureStyle):
    """Mean log-probability per token of each class's continuations against the coefficient, per concept."""
    concepts = list(dict.fromkeys(table["concept"]))
    fig, axes = style.figure(1, len(concepts), scale=(0.6 * len(concepts) + 0.2, 0.9))
    for ax, concept in zip(axes[0], concepts, strict=True):
        frame = table[table["concept"] == concept]
        for cls, part in frame.groupby("class", sort=False):
            ax.plot(part["coefficient"], part["mean_logprob"], marker="o", label=str(cls))
        ax.axvline(0.0, color="0.7", linewidth=0.8)
        ax.set_xlabel("coefficient (x class-mean difference)")
        ax.set_ylabel("mean log-prob per continuation token")
        ax.set_title(concept, fontsize="small")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


ANALYZERS = [SafetyConcepts]
