"""Failure prediction from internals: will the model get this prompt wrong?

The engine behind the `failure_prediction` analyzer, the `predict-failure` command and (later)
the server and training monitors. Plain Python, no pipeline:

* `label_items(model, items)`: greedy continuations (a few tokens, batched, transformers'
  cached greedy `generate`) checked against the answers by
  `failure_tasks.is_correct`; the label is 1 when the model is WRONG (a failure).
* `extract(model, prompts, families)`: ONE forward pass per batch captures everything the
  feature families need, all read at each prompt's last token (the position that predicts
  the answer):
  - `output`: entropy of the next-token distribution (nats), top-1 probability, top-1 minus
    top-2 probability;
  - `logit_lens`: the first layer layer whose logit lens (`model.unembed` of blocks.layer.resid_post,
    the mechanistic lens) ranks the model's final top-1 token first, as (layer + 1) / n_layers,
    and the layer from which it stays first ("settle"), likewise (both via
    `mechanistic.lens.first_match` / `settle`; the last layer always matches);
  - `attention`: per layer, the entropy of each head's attention row at the last query,
    divided by log(number of keys) so prompts of different lengths compare; mean, max and
    min over heads;
  - `residual`: per layer, log of the L2 norm of blocks.layer.resid_post;
  - `probe`: a logistic probe on blocks.layer.resid_post (chosen layers) predicting failure from
    the raw residual vector; its logit is one feature per layer. It is CROSS-FITTED: on the
    training set each example's probe feature comes from a probe that did not see it
    (k-fold, out of fold), and the probe used on new prompts is refitted on the whole
    training set. Otherwise the probe would memorise the training labels and the
    predictor on top would trust it too much.
* `FailurePredictor`: StandardScaler + LogisticRegression (scikit-learn; C chosen by
  cross-validated log-loss) on the selected features; `fit`, `score`, `save`, `load`.
  Saved with `interpsuite.artifacts` (kind "failure_predictor"): the scaler's mean/scale, the
  coefficients and intercept (and each probe's) as float64 tensors, the feature list and
  options as JSON, the model's fingerprint. Never a pickle; predictions are recomputed with
  numpy from the stored numbers, so a reloaded predictor gives bit-identical scores.
* `evaluate(...)`: a stratified held-out split, AUROC / AUPRC / ECE of the predictor and of
  the baseline (top-1 probability alone, fitted the same way; and 1 - top-1 probability
  unfitted), every family alone and every family dropped, standardised coefficients and a
  paired bootstrap interval of the AUROC difference to the baseline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from interpsuite.artifacts import ModelFingerprint, load_artifact, save_artifact
from interpsuite.errors import ConfigError

from ..probing.capture import Progress, no_progress
from .failure_tasks import TaskItem, is_correct, normalise, prepare_prompt
from .generation import generate
from .texts import check_texts

KIND = "failure_predictor"
FAMILIES: tuple[str, ...] = ("output", "logit_lens", "attention", "residual", "probe")
OUTPUT_FEATURES = ("output.entropy", "output.top1_prob", "output.margin")
LENS_FEATURES = ("logit_lens.first_layer", "logit_lens.settle_layer")
ATTENTION_STATS = ("mean", "max", "min")
BASELINE_FEATURE = "output.top1_prob"
DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


# --- feature spec ------------------------------------------------------------------------
def default_probe_layers(n_layers: int) -> list[int]:
    """The middle layer and the one three quarters up (de-duplicated for shallow models)."""
    return sorted({n_layers // 2, (3 * n_layers) // 4} & set(range(n_layers))) or [n_layers - 1]


def check_families(families: Sequence[str], what: str = "failure_prediction.families") -> tuple[str, ...]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ConfigError(f"{what}: unknown feature famil(ies) {unknown}; choose from {', '.join(FAMILIES)}")
    if not families:
        raise ConfigError(f"{what}: empty; choose at least one of {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in families)


def family_of(name: str) -> str:
    """`residual.L03.log_norm` -> `residual` (a column without a dot is its own family)."""
    return name.split(".", 1)[0]


def layer_tag(layer: int) -> str:
    return f"L{layer:02d}"


def feature_names(families: Sequence[str], n_layers: int, probe_layers: Sequence[int]) -> list[str]:
    """The columns of the selected families, in a fixed order."""
    names: list[str] = []
    for family in families:
        if family == "output":
            names += OUTPUT_FEATURES
        elif family == "logit_lens":
            names += LENS_FEATURES
        elif family == "attention":
            names += [f"attention.{layer_tag(layer)}.{s}" for layer in range(n_layers) for s in ATTENTION_STATS]
        elif family == "residual":
            names += [f"residual.{layer_tag(layer)}.log_norm" for layer in range(n_layers)]
        elif family == "probe":
            names += [f"probe.{layer_tag(layer)}" for layer in probe_layers]
    return names


# --- labels --------------------------------------------------------------------------------
@dataclass
class Labelled:
    """The prompts as run (see failure_tasks.prepare_prompt), what the model said, and the labels."""

    items: list[TaskItem]
    prompts: list[str]
    continuations: list[str]
    generated_first: list[int]  # first generated token per prompt (-1: not generated, see label_items)
    failed: np.ndarray  # 1 = the model's answer is wrong

    @property
    def tasks(self) -> list[str]:
        return [item.task for item in self.items]


def greedy_answers(model, prompts: Sequence[str], steps: int, max_length: int | None = 128) -> list[list[int]]:
    """Greedy continuations (token ids, `steps` at most, up to and with EOS) of a batch of prompts:
    `generation.generate` with no intervention (cached, left-padded). The analyzer checks that
    the first token equals the top-1 token of the right-padded feature pass."""
    return generate(model, prompts, [[]], steps, max_length, batch_rows=len(prompts), keep_eos=True)[0]


def answer_steps(tokenizer, prompt: str, answers: Sequence[str]) -> int:
    """Tokens of the longest accepted answer after this prompt (its leading space moved or not)."""
    moved = prompt.endswith(" ")
    return max(len(tokenizer(a.lstrip() if moved else a, add_special_tokens=False)["input_ids"]) for a in answers)


def prepared_prompts(tokenizer, items: Sequence[TaskItem]) -> list[str]:
    """The prompts as run (`failure_tasks.prepare_prompt`): features and labels use these."""
    return [prepare_prompt(tokenizer, item.prompt, item.answers) for item in items]


def could_start_answer(tokenizer, token_id: int, answers: Sequence[str]) -> bool:
    """False when a continuation beginning with this token cannot pass `is_correct` for any answer.

    The normalised first token and each normalised answer must be prefixes of one another;
    a whitespace token, or a byte that is only part of a character, decides nothing."""
    head = normalise(tokenizer.decode([token_id], skip_special_tokens=True)).rstrip()
    if not head or "\ufffd" in head:  # whitespace, or part of a multi-byte character: undecided
        return True
    wants = [normalise(answer).rstrip() for answer in answers]
    return any(want.startswith(head) or head.startswith(want) for want in wants)


def label_items(
    model,
    items: Sequence[TaskItem],
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    max_new_tokens: int = 8,
    first_tokens: Sequence[int] | None = None,
    progress: Progress = no_progress,
) -> Labelled:
    """Greedy continuations of every prompt and whether each is correct (the failure labels).

    Each batch generates as many tokens as its longest answer has, plus one (so the character
    after the answer is seen), at most `max_new_tokens`. With `first_tokens` (the top-1 token
    of each prompt from the feature pass, `Extraction.top1_ids`), a prompt whose first token
    cannot start any answer (`could_start_answer`) is labelled wrong without generating; its
    continuation is that token alone and its entry in `generated_first` is -1."""
    items = list(items)
    if not items:
        raise ConfigError("failure prediction: no task items to label; give tasks with prompts and answers")
    tok = model.tokenizer
    prompts = prepared_prompts(tok, items)
    continuations = [""] * len(items)
    first = [-1] * len(items)
    todo = list(range(len(items)))
    if first_tokens is not None:
        todo = [i for i in todo if could_start_answer(tok, int(first_tokens[i]), items[i].answers)]
        for i in set(range(len(items))) - set(todo):
            continuations[i] = tok.decode([int(first_tokens[i])], skip_special_tokens=True)
    for start in progress(range(0, len(todo), batch_size), "failure_prediction answers"):
        rows = todo[start : start + batch_size]
        longest = max(answer_steps(tok, prompts[i], items[i].answers) for i in rows)
        steps = max(1, min(max_new_tokens, longest + 1))
        for i, ids in zip(rows, greedy_answers(model, [prompts[i] for i in rows], steps, max_length), strict=True):
            first[i] = int(ids[0]) if ids else -1
            continuations[i] = tok.decode(ids, skip_special_tokens=True)
    failed = np.array([0 if is_correct(c, i.answers) else 1 for c, i in zip(continuations, items, strict=True)])
    return Labelled(items, prompts, continuations, first, failed)


# --- features ------------------------------------------------------------------------------
@dataclass
class Extraction:
    """Scalar features (one row per prompt) and, for the probe, the residual vectors of its layers."""

    features: pd.DataFrame
    probe_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    top1_ids: list[int] = field(default_factory=list)
    lens_last_layer_mismatches: int = 0

    def subset(self, rows: Sequence[int]) -> Extraction:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return Extraction(
            self.features.iloc[list(rows)].reset_index(drop=True),
            {layer: acts[index] for layer, acts in self.probe_inputs.items()},
            [self.top1_ids[r] for r in rows] if self.top1_ids else [],
        )


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def extract(
    model,
    prompts: Sequence[str],
    families: Sequence[str] = FAMILIES,
    probe_layers: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    progress: Progress = no_progress,
) -> Extraction:
    """The features of every prompt, one forward pass per batch (the `output` family is always
    computed: the baseline needs it)."""
    from ..mechanistic.lens import first_match, settle

    prompts = check_texts(prompts, "failure prediction")
    info = model.info
    n_layers = info.n_layers
    families = check_families(families)
    probe_layers = list(probe_layers) if probe_layers is not None else default_probe_layers(n_layers)
    want = set(families)
    resid_layers = set()
    if want & {"logit_lens", "residual"}:
        resid_layers |= set(range(n_layers))
    if "probe" in want:
        resid_layers |= set(probe_layers)
    capture = [f"blocks.{layer}.resid_post" for layer in sorted(resid_layers)]
    if "attention" in want:
        capture += [f"blocks.{layer}.attn.pattern" for layer in range(n_layers)]
    rows: list[dict[str, float]] = []
    probe_parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in probe_layers} if "probe" in want else {}
    top1_ids: list[int] = []
    mismatches = 0
    for start in progress(range(0, len(prompts), batch_size), "failure_prediction features"):
        chunk = prompts[start : start + batch_size]
        batch = model.tokenize(chunk, max_length)
        keep, column = batch.last_positions()
        with torch.no_grad():
            out = model.forward(batch, capture=capture, logits_to_keep=keep)
        r = torch.arange(batch.size, device=out.output.device)
        logits = out.output[r, column.to(out.output.device)].float()
        probs = torch.softmax(logits, -1)
        top2 = probs.topk(2, dim=-1).values
        final_top = logits.argmax(-1)
        top1_ids += final_top.tolist()
        feats: dict[str, torch.Tensor] = {
            "output.entropy": _entropy(probs),
            "output.top1_prob": top2[:, 0],
            "output.margin": top2[:, 0] - top2[:, 1],
        }
        last = batch.last_index
        resid = {layer: out.cache[f"blocks.{layer}.resid_post"][r, last.to(r.device)].float() for layer in resid_layers}
        if "logit_lens" in want:
            # every layer's last-token residual through the lens in ONE unembedding: a matrix
            # product per layer would read the [vocab, d] unembedding n_layers times
            stacked = torch.stack([resid[layer] for layer in range(n_layers)], dim=1)  # [batch, layer, d]
            lens_top = model.unembed(stacked).float().argmax(-1)  # [batch, layer]
            matches = (lens_top == final_top[:, None].to(lens_top.device)).cpu()
            mismatches += int((~matches[:, -1]).sum())
            layers = list(range(n_layers))
            firsts = [first_match(layers, row.tolist()) for row in matches]
            settles = [settle(layers, row.tolist()) for row in matches]
            feats["logit_lens.first_layer"] = torch.tensor(
                [(n_layers if f is None else f + 1) / n_layers for f in firsts]
            )
            feats["logit_lens.settle_layer"] = torch.tensor(
                [(n_layers if s is None else s + 1) / n_layers for s in settles]
            )
        if "residual" in want:
            for layer in range(n_layers):
                feats[f"residual.{layer_tag(layer)}.log_norm"] = torch.log(resid[layer].norm(dim=-1).clamp_min(1e-30))
        if "attention" in want:
            n_keys = (last + 1).float().to(r.device)
            denom = torch.where(n_keys > 1, torch.log(n_keys), torch.ones_like(n_keys))
            for layer in range(n_layers):
                pattern = out.cache[f"blocks.{layer}.attn.pattern"]  # [batch, head, q, k]
                row = pattern[r, :, last.to(r.device)].float()  # [batch, head, k]
                ent = _entropy(row) / denom[:, None]
                tag = layer_tag(layer)
                feats[f"attention.{tag}.mean"] = ent.mean(-1)
                feats[f"attention.{tag}.max"] = ent.max(-1).values
                feats[f"attention.{tag}.min"] = ent.min(-1).values
        for layer in probe_parts:
            probe_parts[layer].append(resid[layer].cpu())
        columns = {name: value.detach().cpu().double().numpy() for name, value in feats.items()}
        rows += [{name: float(values[i]) for name, values in columns.items()} for i in range(batch.size)]
        del out
    names = [n for n in feature_names(families, n_layers, probe_layers) if family_of(n) != "probe"]
    ordered = list(dict.fromkeys([*OUTPUT_FEATURES, *names]))
    table = pd.DataFrame(rows, columns=ordered)
    probe_inputs = {layer: torch.cat(parts).double() for layer, parts in probe_parts.items()}
    return Extraction(table, probe_inputs, top1_ids, mismatches)


# --- the linear model ----------------------------------------------------------------------
@dataclass
class LinearModel:
    """Standardise, then a logistic regression: everything needed to predict, as arrays."""

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    c: float

    def standardised(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def logit(self, x: np.ndarray) -> np.ndarray:
        return self.standardised(x) @ self.coef + self.intercept

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each feature's term of the logit, relative to the training mean (they sum to logit - intercept)."""
        return self.standardised(x) * self.coef

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}mean": torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float64)),
            f"{prefix}scale": torch.from_numpy(np.ascontiguousarray(self.scale, dtype=np.float64)),
            f"{prefix}coef": torch.from_numpy(np.ascontiguousarray(self.coef, dtype=np.float64)),
            f"{prefix}intercept": torch.tensor([self.intercept], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], names: list[str], c: float, prefix: str = ""
    ) -> LinearModel:
        try:
            parts = [tensors[f"{prefix}{key}"].double().numpy() for key in ("mean", "scale", "coef", "intercept")]
        except KeyError as err:
            raise ConfigError(
                f"failure predictor: tensor {err} is missing; the file is corrupt, save it again"
            ) from None
        mean, scale, coef, intercept = parts
        if not (mean.shape == scale.shape == coef.shape == (len(names),)) or intercept.shape != (1,):
            raise ConfigError("failure predictor: its tensors do not match its feature list; the file is corrupt")
        return cls(list(names), mean, scale, coef, float(intercept[0]), float(c))


def _folds(labels: np.ndarray, folds: int) -> int:
    return max(2, min(folds, int(np.bincount(labels, minlength=2).min())))


def fit_linear(
    x: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 5,
    seed: int = 0,
) -> LinearModel:
    """StandardScaler + LogisticRegression, C chosen by stratified k-fold log-loss on the training data."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    z = (x - scaler.mean_) / scale
    with warnings.catch_warnings():  # scikit-learn 1.8+ announces parameter renames; the defaults are what we want
        warnings.simplefilter("ignore", FutureWarning)
        if len(c_grid) > 1:
            cv = StratifiedKFold(_folds(labels, folds), shuffle=True, random_state=seed)
            clf = LogisticRegressionCV(Cs=list(c_grid), cv=cv, scoring="neg_log_loss", max_iter=5000).fit(z, labels)
            c = float(np.ravel(clf.C_)[0])
        else:
            c = float(c_grid[0])
            clf = LogisticRegression(C=c, max_iter=5000).fit(z, labels)
    return LinearModel(list(names), scaler.mean_.copy(), scale, clf.coef_[0].copy(), float(clf.intercept_[0]), c)


def _check_labels(labels: np.ndarray, what: str, need: int = 2) -> None:
    counts = np.bincount(np.asarray(labels).astype(int), minlength=2)
    if counts.min() < need:
        wrong, right = int(counts[1]), int(counts[0])
        raise ConfigError(
            f"{what}: the model is wrong on {wrong} and right on {right} of {wrong + right} examples; a failure "
            f"predictor needs at least {need} of each (AUROC is undefined otherwise): add tasks the model sometimes "
            f"gets right and sometimes wrong"
        )


# --- the predictor -------------------------------------------------------------------------
@dataclass
class FailureScores:
    """Probability of failure per prompt, each feature's contribution to its logit, the features."""

    probability: np.ndarray
    contributions: pd.DataFrame
    features: pd.DataFrame

    def top_features(self, row: int, k: int = 3) -> list[tuple[str, float, float]]:
        """(feature, contribution to the logit, feature value), largest |contribution| first."""
        contrib = self.contributions.iloc[row]
        order = contrib.abs().sort_values(ascending=False).index[:k]
        return [(name, float(contrib[name]), float(self.features.iloc[row][name])) for name in order]


@dataclass
class FailurePredictor:
    """Probability that the model's answer to a prompt is wrong, from its internals.

    `fit` from features and labels (a DataFrame, or an `Extraction` with the probe's residual
    vectors) or from a model and task items; `score(model, prompts)`; `save(dir)` /
    `load(dir, model=None)`."""

    linear: LinearModel
    families: tuple[str, ...]
    probe_layers: list[int] = field(default_factory=list)
    probes: dict[int, LinearModel] = field(default_factory=dict)
    n_layers: int | None = None
    fingerprint: ModelFingerprint | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the training design matrix (probe columns out of fold); kept in memory only, never saved
    training_design: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def feature_names(self) -> list[str]:
        return list(self.linear.names)

    # fitting
    @classmethod
    def fit(
        cls,
        features: pd.DataFrame | Extraction | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        model=None,
        tasks: Sequence[TaskItem] | None = None,
        families: Sequence[str] = FAMILIES,
        probe_layers: Sequence[int] | None = None,
        c_grid: Sequence[float] = DEFAULT_C_GRID,
        probe_c_grid: Sequence[float] = (0.001, 0.01, 0.1),
        folds: int = 5,
        seed: int = 0,
        batch_size: int = 8,
        max_length: int | None = 128,
    ) -> FailurePredictor:
        """Fit on given features (labels 1 = failure) or, with `model` and `tasks`, label and
        extract first. With a DataFrame every column is a feature (its family is the part of
        its name before the first dot)."""
        fingerprint = None
        n_layers = None
        if features is None:
            if model is None or tasks is None:
                raise ConfigError("FailurePredictor.fit: give features and labels, or model and tasks")
            labelled = label_items(model, tasks, batch_size=batch_size, max_length=max_length)
            features = extract(model, labelled.prompts, families, probe_layers, batch_size=batch_size,
                               max_length=max_length)  # fmt: skip
            labels = labelled.failed
        if model is not None:
            fingerprint = ModelFingerprint.of(model)
            n_layers = model.info.n_layers
        if labels is None:
            raise ConfigError("FailurePredictor.fit: labels are missing (1 = the model was wrong, 0 = right)")
        y = np.asarray(labels).astype(int)
        if isinstance(features, pd.DataFrame):
            features = Extraction(features.reset_index(drop=True))
        if len(features.features) != len(y):
            raise ConfigError(f"FailurePredictor.fit: {len(features.features)} feature rows but {len(y)} labels")
        if not set(np.unique(y)) <= {0, 1}:
            raise ConfigError("FailurePredictor.fit: labels must be 0 (right) or 1 (wrong)")
        _check_labels(y, "FailurePredictor.fit")
        if features.probe_inputs:
            selected = [f for f in FAMILIES if f in families]
        else:
            present = list(dict.fromkeys(family_of(c) for c in features.features.columns))
            selected = [f for f in present if f in families or f not in FAMILIES]
        probe_layers_used = sorted(features.probe_inputs) if "probe" in selected else []
        design = features.features.copy()
        probes: dict[int, LinearModel] = {}
        for layer in probe_layers_used:
            design[f"probe.{layer_tag(layer)}"] = cross_fitted_probe(
                features.probe_inputs[layer].numpy(), y, probe_c_grid, folds, seed
            )
            x = features.probe_inputs[layer].numpy()
            probes[layer] = fit_linear(x, y, [f"d{i}" for i in range(x.shape[1])], probe_c_grid, folds, seed)
        names = [c for c in design.columns if family_of(c) in selected]
        if not names:
            raise ConfigError(f"FailurePredictor.fit: no feature columns of the families {list(families)}")
        linear = fit_linear(design[names].to_numpy(), y, names, c_grid, folds, seed)
        options = {"c_grid": list(c_grid), "probe_c_grid": list(probe_c_grid), "folds": folds, "seed": seed}
        predictor = cls(linear, tuple(selected), probe_layers_used, probes, n_layers, fingerprint, options)
        predictor.training_design = design
        return predictor

    # scoring
    def design(self, data: pd.DataFrame | Extraction) -> pd.DataFrame:
        """The predictor's feature columns for new data (probe features from the refitted probes)."""
        if isinstance(data, pd.DataFrame):
            frame = data.reset_index(drop=True).copy()
            probe_inputs: dict[int, torch.Tensor] = {}
        else:
            frame, probe_inputs = data.features.reset_index(drop=True).copy(), data.probe_inputs
        for layer, probe in self.probes.items():
            name = f"probe.{layer_tag(layer)}"
            if name not in frame.columns:
                if layer not in probe_inputs:
                    raise ConfigError(
                        f"failure predictor: the residual vectors of layer {layer} for its probe are missing"
                    )
                frame[name] = probe.logit(probe_inputs[layer].numpy())
        missing = [n for n in self.feature_names if n not in frame.columns]
        if missing:
            raise ConfigError(f"failure predictor: feature(s) {missing[:5]} missing from the data it is asked to score")
        return frame[self.feature_names]

    def score_features(self, data: pd.DataFrame | Extraction) -> FailureScores:
        frame = self.design(data)
        x = frame.to_numpy(dtype=np.float64)
        contributions = pd.DataFrame(self.linear.contributions(x), columns=self.feature_names)
        return FailureScores(self.linear.probability(x), contributions, frame)

    def score(
        self, model, prompts: Sequence[str] | str, *, batch_size: int = 8, max_length: int | None = 128
    ) -> FailureScores:
        """Probability that the model answers each prompt wrongly, with per-feature contributions."""
        prompts = check_texts(prompts, "failure prediction")
        if self.fingerprint is not None:
            _check(self, model)
        if self.n_layers is None:
            raise ConfigError("failure predictor: fitted on features only, it cannot extract them from a model")
        data = extract(model, prompts, self.families, self.probe_layers or None, batch_size=batch_size,
                       max_length=max_length)  # fmt: skip
        return self.score_features(data)

    # persistence
    def save(self, directory: str | Path, model=None) -> Path:
        """Write the predictor as an artifact folder (safetensors + JSON, never pickle)."""
        fingerprint = ModelFingerprint.of(model) if model is not None else self.fingerprint
        if fingerprint is None:
            raise ConfigError("failure predictor: fitted without a model; pass model= to save() so it names its model")
        tensors = self.linear.tensors()
        for layer, probe in self.probes.items():
            tensors.update(probe.tensors(f"probe.{layer_tag(layer)}."))
        spec = {
            "feature_names": self.feature_names,
            "families": list(self.families),
            "probe_layers": list(self.probe_layers),
            "n_layers": self.n_layers if self.n_layers is not None else fingerprint.n_layers,
            "c": self.linear.c,
            "probe_c": {str(layer): probe.c for layer, probe in self.probes.items()},
            "probe_dim": {str(layer): len(probe.names) for layer, probe in self.probes.items()},
            "options": self.options,
            "label": "1 = the model's greedy answer is wrong (failure_tasks.is_correct)",
        }
        return save_artifact(directory, KIND, tensors, spec, fingerprint)

    @classmethod
    def load(cls, directory: str | Path, model=None) -> FailurePredictor:
        """Read a saved predictor; with `model`, refuse it unless it was fitted on that model."""
        artifact = load_artifact(directory, KIND, "failure predictor")
        spec = artifact.spec
        try:
            names = [str(n) for n in spec["feature_names"]]
            families = tuple(str(f) for f in spec["families"])
            probe_layers = [int(layer) for layer in spec["probe_layers"]]
            n_layers = int(spec["n_layers"])
            linear = LinearModel.from_tensors(artifact.tensors, names, float(spec["c"]))
            probes = {
                layer: LinearModel.from_tensors(
                    artifact.tensors,
                    [f"d{i}" for i in range(int(spec["probe_dim"][str(layer)]))],
                    float(spec["probe_c"][str(layer)]),
                    f"probe.{layer_tag(layer)}.",
                )  # fmt: skip
                for layer in probe_layers
            }
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"failure predictor {directory}: its spec is incomplete ({err}); fit it again") from None
        predictor = cls(linear, families, probe_layers, probes, n_layers, artifact.model, dict(spec.get("options", {})))
        if model is not None:
            _check(predictor, model)
        return predictor


def _check(predictor: FailurePredictor, model) -> None:
    reason = predictor.fingerprint.mismatch(ModelFingerprint.of(model)) if predictor.fingerprint else None
    if reason is not None:
        raise ConfigError(f"failure predictor: {reason}; fit a new one on this model")


def cross_fitted_probe(
    x: np.ndarray, labels: np.ndarray, c_grid: Sequence[float], folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold probe logits: each example scored by a probe fitted without it."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(int)
    out = np.zeros(len(labels))
    splitter = StratifiedKFold(_folds(labels, folds), shuffle=True, random_state=seed)
    for train, held in splitter.split(x, labels):
        if len(np.unique(labels[train])) < 2:
            continue
        probe = fit_linear(x[train], labels[train], [f"d{i}" for i in range(x.shape[1])], c_grid, folds, seed)
        out[held] = probe.logit(x[held])
    return out


# --- metrics -------------------------------------------------------------------------------
def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with failures (1) positive; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision with failures positive (chance = the failure rate); NaN with one class."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels).astype(int)
    return float(average_precision_score(labels, scores)) if len(np.unique(labels)) == 2 else math.nan


def reliability_bins(probability: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins over [0, 1]: count, mean predicted probability and observed failure rate."""
    probability = np.asarray(probability, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    index = np.clip((probability * n_bins).astype(int), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "bin_low": b / n_bins,
                "bin_high": (b + 1) / n_bins,
                "count": count,
                "mean_predicted": float(probability[inside].mean()) if count else math.nan,
                "observed_failure_rate": float(labels[inside].mean()) if count else math.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(probability: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over equal-width bins of (bin share) x |observed failure rate - mean predicted|."""
    bins = reliability_bins(probability, labels, n_bins)
    filled = bins[bins["count"] > 0]
    total = float(filled["count"].sum())
    if total == 0:
        return math.nan
    gaps = (filled["observed_failure_rate"] - filled["mean_predicted"]).abs()
    return float((filled["count"] / total * gaps).sum())


def bootstrap_auroc_difference(
    labels: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% paired-bootstrap interval of AUROC(a) - AUROC(b) over the held-out examples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(int)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[idx])) < 2:
            continue
        diffs.append(auroc(labels[idx], a[idx]) - auroc(labels[idx], b[idx]))
    if not diffs:
        return math.nan, math.nan
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


# --- held-out evaluation ------------------------------------------------------------------------
@dataclass
class Evaluation:
    predictor: FailurePredictor
    train: np.ndarray
    test: np.ndarray
    test_probability: np.ndarray
    baseline_probability: np.ndarray
    feature_sets: pd.DataFrame
    coefficients: pd.DataFrame
    reliability: pd.DataFrame
    metrics: dict[str, float]
    roc: dict[str, tuple[np.ndarray, np.ndarray]]


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A held-out split stratified by label (disjoint index sets, sorted)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def evaluate(
    extraction: Extraction,
    labels: np.ndarray,
    *,
    families: Sequence[str] = FAMILIES,
    model=None,
    test_fraction: float = 0.3,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    probe_c_grid: Sequence[float] = (0.001, 0.01, 0.1),
    folds: int = 5,
    seed: int = 0,
    n_bins: int = 10,
    n_boot: int = 1000,
    groups: Sequence[str] | None = None,
) -> Evaluation:
    """Fit on a stratified training split, measure on the held-out split, against the baseline.

    With `groups` (each example's task), a control is added: the baseline plus the task's
    identity (one-hot). A pooled AUROC rewards knowing that a task is hard; a predictor that
    only does that does no better than this control."""
    from sklearn.metrics import roc_curve

    y = np.asarray(labels).astype(int)
    _check_labels(y, "failure prediction", need=max(4, folds))
    train, test = split_indices(y, test_fraction, seed)
    _check_labels(y[train], "failure prediction (training split)", need=2)
    _check_labels(y[test], "failure prediction (held-out split)", need=1)
    options = {"c_grid": c_grid, "probe_c_grid": probe_c_grid, "folds": folds, "seed": seed}
    predictor = FailurePredictor.fit(extraction.subset(train), y[train], model=model, families=families, **options)
    test_data = extraction.subset(test)
    prob = predictor.score_features(test_data).probability
    # every column on both splits: the probe's out-of-fold logits on train, refitted probe on test
    train_design = predictor.training_design
    test_design = test_data.features.copy()
    for layer in predictor.probe_layers:
        test_design[f"probe.{layer_tag(layer)}"] = predictor.probes[layer].logit(test_data.probe_inputs[layer].numpy())
    y_train, y_test = y[train], y[test]

    def fitted(columns: list[str]) -> np.ndarray:
        linear = fit_linear(train_design[columns].to_numpy(), y_train, columns, c_grid, folds, seed)
        return linear.probability(test_design[columns].to_numpy())

    baseline = fitted([BASELINE_FEATURE])
    raw = 1.0 - test_design[BASELINE_FEATURE].to_numpy()
    rows = [_row("predictor (all selected families)", "all", prob, y_test, n_bins)]
    rows.append(_row("baseline: top-1 probability (fitted)", "baseline", baseline, y_test, n_bins))
    rows.append(_row("baseline: 1 - top-1 probability (raw)", "baseline_raw", raw, y_test, n_bins))
    if groups is not None and len(set(groups)) > 1:
        dummies = pd.get_dummies(pd.Series(list(groups)), prefix="task", dtype=float)
        onehot = list(dummies.columns)
        train_design = pd.concat([train_design, dummies.iloc[train].reset_index(drop=True)], axis=1)
        test_design = pd.concat([test_design, dummies.iloc[test].reset_index(drop=True)], axis=1)
        control = fitted([BASELINE_FEATURE, *onehot])
        rows.append(_row("control: task identity + top-1 probability", "control_task", control, y_test, n_bins))
    by_family: dict[str, list[str]] = {}
    for name in predictor.feature_names:
        by_family.setdefault(family_of(name), []).append(name)
    for family, columns in by_family.items():
        rows.append(_row(f"only {family}", f"only:{family}", fitted(columns), y_test, n_bins))
    if len(by_family) > 1:
        for family in by_family:
            rest = [n for n in predictor.feature_names if family_of(n) != family]
            rows.append(_row(f"without {family}", f"without:{family}", fitted(rest), y_test, n_bins))
    table = pd.DataFrame(rows)
    full = float(table.loc[table["key"] == "all", "auroc"].iloc[0])
    table["auroc_minus_all"] = table["auroc"] - full
    coefficients = pd.DataFrame(
        {
            "feature": predictor.feature_names,
            "family": [family_of(n) for n in predictor.feature_names],
            "standardised_coefficient": predictor.linear.coef,
        }
    )
    coefficients["abs_coefficient"] = coefficients["standardised_coefficient"].abs()
    coefficients = coefficients.sort_values("abs_coefficient", ascending=False).reset_index(drop=True)
    reliability = pd.concat(
        [
            reliability_bins(prob, y_test, n_bins).assign(predictor="predictor"),
            reliability_bins(baseline, y_test, n_bins).assign(predictor="baseline (top-1 probability)"),
        ],
        ignore_index=True,
    )
    low, high = bootstrap_auroc_difference(y_test, prob, baseline, n_boot, seed)
    base_row = table.loc[table["key"] == "baseline"].iloc[0]
    raw_row = table.loc[table["key"] == "baseline_raw"].iloc[0]
    metrics = {
        "auroc": full,
        "auprc": float(table.loc[table["key"] == "all", "auprc"].iloc[0]),
        "ece": float(table.loc[table["key"] == "all", "ece"].iloc[0]),
        "brier": float(np.mean((prob - y_test) ** 2)),
        "baseline_auroc": float(base_row["auroc"]),
        "baseline_auprc": float(base_row["auprc"]),
        "baseline_ece": float(base_row["ece"]),
        "baseline_brier": float(np.mean((baseline - y_test) ** 2)),
        "raw_top1_auroc": float(raw_row["auroc"]),
        "task_control_auroc": float(table.loc[table["key"] == "control_task", "auroc"].iloc[0])
        if (table["key"] == "control_task").any()
        else math.nan,
        "auroc_minus_baseline": full - float(base_row["auroc"]),
        "auroc_diff_ci_low": low,
        "auroc_diff_ci_high": high,
        "n_train": float(len(train)),
        "n_test": float(len(test)),
        "test_failure_rate": float(y_test.mean()),
    }
    roc = {}
    for key, scores in (("predictor", prob), ("baseline (top-1 probability)", baseline)):
        fpr, tpr, _ = roc_curve(y_test, scores)
        roc[key] = (fpr, tpr)
    return Evaluation(predictor, train, test, prob, baseline, table, coefficients, reliability, metrics, roc)


def _row(name: str, key: str, prob: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, Any]:
    return {
        "feature_set": name,
        "key": key,
        "auroc": auroc(labels, prob),
        "auprc": auprc(labels, prob),
        "ece": expected_calibration_error(prob, labels, n_bins),
    }
