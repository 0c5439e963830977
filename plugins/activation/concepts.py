"""concept_neurons: neurons that separate texts with a concept from texts without it.

Texts come from a labelled set the project ships (`concept: negation | numbers | plural_nouns
| emotion`, files `concept_sets/<name>.jsonl` with {"text", "label": 0/1}), from a labelled
.jsonl path given as `concept`, or from `positive_path` / `negative_path` (.txt one text per
line, or .jsonl with a "text" field). The run's own inputs are not used.

Each text is pooled over its real tokens (mean or max) at `hook_point` of each layer. A
seeded, stratified split by unique text gives a train set, on which every neuron is ranked by
Cohen's d (streamed per-class float64 sums: one pass); the top neurons are then scored on the
held-out texts as one-neuron classifiers (ROC AUC of the activation, negated for negative d).

Honest verdict: the best held-out AUC among the top neurons is the maximum of `top_n`
noisy estimates, so it is also compared with a permutation null (the same maximum with the
test labels shuffled). A concept is reported as found only if that best AUC reaches
`min_auc` and beats the null at p < `alpha`; otherwise the summary says "no concept neurons
found".
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
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .neuron_views import plot_effect_sizes, plot_heldout_auc

CONCEPT_DIR = Path(__file__).parent / "concept_sets"
SUPPORTED_HOOKS = ("mlp.post", "resid_pre", "resid_post", "attn.out", "mlp.out")
POOLING = ("mean", "max")
NOT_FOUND = "no concept neurons found"


def available_concepts() -> list[str]:
    return sorted(path.stem for path in CONCEPT_DIR.glob("*.jsonl"))


@dataclass
class ConceptNeuronsConfig:
    #: a shipped labelled set (see available_concepts()) or a path to a labelled .jsonl
    concept: str | None = "negation"
    #: texts with / without the concept (.txt or .jsonl); used instead of `concept`
    positive_path: str | None = None
    negative_path: str | None = None
    hook_point: str = "mlp.post"
    layers: list[int] | None = None
    pooling: str = "mean"
    top_n: int = 10
    test_fraction: float = 0.3
    min_auc: float = 0.65
    alpha: float = 0.01
    n_permutations: int = 1000
    seed: int | None = None


@dataclass
class ConceptSet:
    texts: list[str]
    labels: np.ndarray
    source: str
    name: str


def _read_texts(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"concept_neurons.{what}: file {path} not found; give an existing .txt or .jsonl file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines]
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        texts.append(record if isinstance(record, str) else str(record.get("text", "")))
    return texts


def _read_labelled(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text, label = str(record["text"]), int(record["label"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConfigError(f'{path}:{number}: expected {{"text": ..., "label": 0 or 1}}') from None
        if label not in (0, 1):
            raise ConfigError(f"{path}:{number}: label {label} is not 0 or 1")
        texts.append(text)
        labels.append(label)
    return texts, labels


def load_concept_set(cfg: ConceptNeuronsConfig) -> ConceptSet:
    """Read and check the labelled texts (small files: fine to do in validate)."""
    paths = (cfg.positive_path, cfg.negative_path)
    if any(p is not None for p in paths):
        if None in paths:
            raise ConfigError("concept_neurons: give both positive_path and negative_path (texts with and without)")
        positive = _read_texts(Path(cfg.positive_path), "positive_path")
        negative = _read_texts(Path(cfg.negative_path), "negative_path")
        texts, labels = positive + negative, [1] * len(positive) + [0] * len(negative)
        source, name = f"{cfg.positive_path} | {cfg.negative_path}", Path(cfg.positive_path).stem
    elif cfg.concept is None:
        raise ConfigError(
            f"concept_neurons: no concept given; set concept to one of {available_concepts()} "
            "or give positive_path and negative_path"
        )
    else:
        path = CONCEPT_DIR / f"{cfg.concept}.jsonl"
        if not path.is_file():
            custom = Path(cfg.concept)
            if custom.suffix == ".jsonl" and custom.is_file():
                path = custom
            else:
                raise ConfigError(
                    f"concept_neurons.concept: unknown concept {cfg.concept!r}; available: {available_concepts()} "
                    "(or a path to a .jsonl file with text/label records)"
                )
        texts, labels = _read_labelled(path)
        source, name = str(path), path.stem
    seen: dict[str, int] = {}
    for text, label in zip(texts, labels, strict=True):
        text = text.strip()
        if not text:
            continue
        if seen.setdefault(text, label) != label:
            raise ConfigError(f"concept_neurons: the text {text!r} is labelled both 0 and 1 in {source}")
    if not seen:
        raise ConfigError(f"concept_neurons: the concept set {source} is empty; give texts with and without it")
    unique_texts, unique_labels = list(seen), np.array(list(seen.values()), dtype=np.int64)
    counts = {c: int((unique_labels == c).sum()) for c in (0, 1)}
    if min(counts.values()) == 0:
        missing = "without" if counts[0] == 0 else "with"
        raise ConfigError(
            f"concept_neurons: the concept set {source} has one class only ({counts[1]} texts with the concept, "
            f"{counts[0]} without); add texts {missing} the concept"
        )
    if min(counts.values()) < 2:
        raise ConfigError(
            f"concept_neurons: the concept set {source} needs at least 2 distinct texts per class for a "
            f"train/test split (has {counts[1]} with, {counts[0]} without)"
        )
    return ConceptSet(unique_texts, unique_labels, source, name)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split; each class keeps >= 1 text on each side."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = min(len(members) - 1, max(1, round(test_fraction * len(members))))
        test += members[:n_test].tolist()
        train += members[n_test:].tolist()
    return np.sort(np.array(train)), np.sort(np.array(test))


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[batch, pos, units] -> [batch, units] over real tokens only."""
    x = x.float()
    if how == "max":
        return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1)


def cohens_d(sums: np.ndarray, sumsq: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit: (d, mean of class 1, mean of class 0) from per-class float64 sums [2, ...]."""
    n0, n1 = counts[0], counts[1]
    means = sums / counts.reshape(2, *[1] * (sums.ndim - 1))
    var = (sumsq - counts.reshape(2, *[1] * (sums.ndim - 1)) * means**2).clip(min=0)  # sum of squared deviations
    dof = max(n0 + n1 - 2, 1)
    pooled = np.sqrt((var[0] + var[1]) / dof)
    diff = means[1] - means[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 1e-12, diff / np.maximum(pooled, 1e-12), 0.0)
    return d, means[1], means[0]


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per column of `scores` [n, m] (ties averaged); labels [..., n] 0/1."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    n1 = labels.sum(-1, keepdims=True) if labels.ndim > 1 else labels.sum()
    n0 = labels.shape[-1] - n1
    return (labels @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)


class ConceptNeurons(Analyzer):
    name = "concept_neurons"
    family = "activation"
    description = "rank neurons by Cohen's d for a labelled concept; held-out AUC of the top neurons"
    Config = ConceptNeuronsConfig

    def validate(self, info: ModelInfo, cfg: ConceptNeuronsConfig) -> None:
        if cfg.hook_point not in SUPPORTED_HOOKS:
            raise ConfigError(
                f"concept_neurons.hook_point: {cfg.hook_point!r} not supported; choose from {list(SUPPORTED_HOOKS)}"
            )
        if cfg.pooling not in POOLING:
            raise ConfigError(f"concept_neurons.pooling: {cfg.pooling!r}; choose from {list(POOLING)}")
        if not 0.0 < cfg.test_fraction < 1.0:
            raise ConfigError(f"concept_neurons.test_fraction must be in (0, 1) (got {cfg.test_fraction})")
        if cfg.top_n < 1 or cfg.n_permutations < 0:
            raise ConfigError("concept_neurons.top_n must be >= 1 and n_permutations >= 0")
        if not 0.5 <= cfg.min_auc <= 1.0:
            raise ConfigError(f"concept_neurons.min_auc must be in [0.5, 1] (got {cfg.min_auc})")
        if not 0.0 < cfg.alpha <= 1.0:
            raise ConfigError(f"concept_neurons.alpha must be in (0, 1] (got {cfg.alpha})")
        check_layers(info, cfg.layers, "concept_neurons.layers")
        load_concept_set(cfg)

    def estimate(self, info: ModelInfo, cfg: ConceptNeuronsConfig, workload):
        """Every text of the concept set once (train, then test), capturing the hook point at each layer."""
        layers = check_layers(info, cfg.layers, "concept_neurons.layers")
        names = [f"blocks.{layer}.{cfg.hook_point}" for layer in layers]
        data = load_concept_set(cfg)
        units = len(layers) * workload.width_of(names[0])
        n = len(data.texts)
        cost = workload.forward_texts(data.texts, capture=names).hold(4 * units * n * 2)
        # rank AUCs of the top neurons under every label permutation
        ranks = workload.macs(cfg.n_permutations * n * (cfg.top_n + len(layers)))
        return cost + ranks + workload.figures(2, 2)

    def run(self, ctx: RunContext) -> Result:
        cfg: ConceptNeuronsConfig = self.cfg
        info = ctx.model.info
        layers = check_layers(info, cfg.layers, "concept_neurons.layers")
        data = load_concept_set(cfg)
        seed = ctx.seed if cfg.seed is None else cfg.seed
        train, test = split_indices(data.labels, cfg.test_fraction, seed)
        names = [f"blocks.{layer}.{cfg.hook_point}" for layer in layers]

        # pass 1 (train): per-class streamed sums -> Cohen's d for every (layer, unit)
        sums = sumsq = None
        counts = np.zeros(2)
        for ids, pooled in self._pooled(ctx, data.texts, train, names, cfg.pooling, "concept_neurons train"):
            x = pooled.numpy().astype(np.float64)  # [batch, layers, units]
            y = data.labels[ids]
            if sums is None:
                sums, sumsq = np.zeros((2, *x.shape[1:])), np.zeros((2, *x.shape[1:]))
            for cls in (0, 1):
                sums[cls] += x[y == cls].sum(0)
                sumsq[cls] += (x[y == cls] ** 2).sum(0)
                counts[cls] += int((y == cls).sum())
        d, mean_pos, mean_neg = cohens_d(sums, sumsq, counts)  # [layers, units]
        abs_d = np.abs(d)
        flat = np.argsort(-abs_d, axis=None, kind="stable")[: cfg.top_n]
        top = [np.unravel_index(i, d.shape) for i in flat]
        best_per_layer = [(li, int(np.argmax(abs_d[li]))) for li in range(len(layers))]
        selected = list(dict.fromkeys([(int(a), int(b)) for a, b in top] + best_per_layer))

        # pass 2 (test): only the selected neurons
        scores, y_test, test_ids = [], [], []
        rows_index = torch.tensor([s[0] for s in selected])
        cols_index = torch.tensor([s[1] for s in selected])
        for ids, pooled in self._pooled(ctx, data.texts, test, names, cfg.pooling, "concept_neurons test"):
            scores.append(pooled[:, rows_index, cols_index].numpy().astype(np.float64))
            y_test.append(data.labels[ids])
            test_ids += list(ids)
        scores, y_test = np.concatenate(scores), np.concatenate(y_test)
        signs = np.array([1.0 if d[s] >= 0 else -1.0 for s in selected])
        signed = scores * signs

        from sklearn.metrics import roc_auc_score

        aucs = np.array([roc_auc_score(y_test, signed[:, j]) for j in range(len(selected))])
        auc_of = dict(zip(selected, aucs, strict=True))
        top_keys = [(int(a), int(b)) for a, b in top]
        top_cols = [selected.index(k) for k in top_keys]
        top_aucs = aucs[top_cols]
        best = float(top_aucs.max())
        p_value = self._permutation_p(signed[:, top_cols], y_test, best, cfg.n_permutations, seed)
        found = best >= cfg.min_auc and p_value < cfg.alpha

        result = Result()
        top_table = pd.DataFrame(
            [
                {
                    "rank": rank,
                    "layer": layers[li],
                    "unit": unit,
                    "cohens_d": float(d[li, unit]),
                    "direction": "higher with concept" if d[li, unit] >= 0 else "lower with concept",
                    "mean_with": float(mean_pos[li, unit]),
                    "mean_without": float(mean_neg[li, unit]),
                    "test_auc": float(auc_of[(li, unit)]),
                }
                for rank, (li, unit) in enumerate(top_keys)
            ]
        )
        layer_table = pd.DataFrame(
            [
                {
                    "layer": layers[li],
                    "unit": unit,
                    "cohens_d": float(d[li, unit]),
                    "abs_d": float(abs_d[li, unit]),
                    "test_auc": float(auc_of[(li, unit)]),
                }
                for li, unit in best_per_layer
            ]
        )
        result.tables["top_neurons"] = top_table
        result.tables["best_per_layer"] = layer_table
        result.add_figure("effect_sizes", plot_effect_sizes, layer_table, top_table, data.name, ctx.style)
        result.add_figure("heldout_auc", plot_heldout_auc, top_table, cfg.min_auc, data.name, ctx.style)

        overlap = len({data.texts[i] for i in train} & {data.texts[i] for i in test_ids})
        result.add_check("train_test_overlap_texts", overlap, 0)
        result.add_check("auc_outside_0_1", int(((aucs < 0) | (aucs > 1)).sum()), 0)
        agreement = float(np.abs(rank_auc(signed, y_test.astype(np.float64)) - aucs).max())
        result.add_check("rank_auc_matches_sklearn", agreement, 1e-9)

        n_good = int((top_aucs >= cfg.min_auc).sum())
        result.metrics.update(
            {
                "best_test_auc": best,
                "top1_test_auc": float(top_aucs[0]),
                "top1_abs_cohens_d": float(abs_d[top[0]]),
                "top_above_min_auc": float(n_good),
                "permutation_p": p_value,
                "concept_found": float(found),
                "n_train": float(len(train)),
                "n_test": float(len(test)),
            }
        )
        best_row = top_table.iloc[int(np.argmax(top_aucs))]
        if found:
            verdict = (
                f"concept neurons found for {data.name!r}: {n_good} of the top {len(top_keys)} neurons reach "
                f"held-out AUC >= {cfg.min_auc:g}; best L{int(best_row.layer)} U{int(best_row.unit)} "
                f"AUC {best:.3f} (permutation p {p_value:.3g})"
            )
        else:
            verdict = (
                f"{NOT_FOUND} for {data.name!r}: best held-out AUC of the top {len(top_keys)} neurons is "
                f"{best:.3f} (min_auc {cfg.min_auc:g}; permutation p {p_value:.3g}, alpha {cfg.alpha:g})"
            )
        result.summary = {
            "verdict": verdict,
            "concept": data.name,
            "source": data.source,
            "found": bool(found),
            "hook_point": cfg.hook_point,
            "pooling": cfg.pooling,
            "top_neurons": [
                {"layer": int(r.layer), "unit": int(r.unit), "d": round(r.cohens_d, 3), "auc": round(r.test_auc, 3)}
                for r in top_table.head(5).itertuples()
            ],
        }
        return result

    @staticmethod
    def _pooled(ctx: RunContext, texts: list[str], indices: np.ndarray, names: list[str], how: str, desc: str):
        """Yield (text indices, pooled activations [batch, layers, units]) over `indices`."""
        chunks = [indices[i : i + ctx.batch_size] for i in range(0, len(indices), ctx.batch_size)]
        for ids in ctx.progress(chunks, desc, len(chunks)):
            batch = ctx.model.tokenize([texts[i] for i in ids], ctx.max_length, text_ids=[int(i) for i in ids])
            cache = ctx.model.forward(batch, capture=names).cache
            mask = batch.attention_mask.bool()
            yield ids, torch.stack([pool(cache[name], mask, how).cpu() for name in names], dim=1)

    @staticmethod
    def _permutation_p(scores: np.ndarray, labels: np.ndarray, observed: float, n: int, seed: int) -> float:
        """P(max AUC over the top neurons >= observed) with the test labels shuffled."""
        if n == 0:
            return 0.0
        rng = np.random.default_rng(seed + 1)
        perms = np.stack([rng.permutation(labels) for _ in range(n)]).astype(np.float64)
        null = rank_auc(scores, perms).max(axis=1)
        return float((1 + (null >= observed - 1e-12).sum()) / (1 + n))


ANALYZERS = [ConceptNeurons]
