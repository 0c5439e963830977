"""Linear-probe engine: per-layer logistic probes with grouped splits, control tasks and MDL.

The `linear_probe` analyzer captures every layer in one forward pass and hands the features
here, so this module knows nothing about models: it takes `{layer: [n, d]}` features, one label
per example and the text (group) each example came from.

Design choices and why:

* Splits are by text (group), never by token, because token examples of one text share
  context and would leak the answer from train into test.
* The regularisation strength is chosen on a validation split and reported on a separate test
  split, so the reported accuracy is not tuned on the data it is measured on.
* Accuracy alone cannot tell "the layer encodes the property" from "the probe memorised word
  identities"; the control task (Hewitt & Liang 2019) gives each word type a random label, and
  selectivity = task accuracy - control accuracy separates the two.
* MDL online codelength (Voita & Titov 2020) measures how *easily* the labels are extracted,
  which is more stable than accuracy across probe sizes.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from interpsuite.errors import ConfigError

__all__ = [
    "DEFAULT_MDL_FRACTIONS",
    "LayerProbe",
    "MDLResult",
    "ProbeConfig",
    "ProbeFit",
    "ProbeReport",
    "SeedResult",
    "Split",
    "check_probe_inputs",
    "control_labels",
    "fit_probe",
    "grouped_split",
    "online_codelength",
    "probe_layers",
]

# Voita & Titov (2020) block boundaries, as percentages of the training data.
DEFAULT_MDL_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)


@dataclass(frozen=True)
class ProbeConfig:
    """Probe settings; defaults are small so a probe over every layer stays cheap.

    `c_grid` runs from strong to weak regularisation: fits are warm-started along it, and ties in
    validation accuracy go to the stronger regularisation (the simpler probe).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    train_frac: float = 0.6
    val_frac: float = 0.2
    test_frac: float = 0.2
    max_iter: int = 1000
    confidence: float = 0.95
    #: batched: every layer and C in one torch L-BFGS loop; sklearn: one LogisticRegression fit each (reference)
    solver: str = "batched"

    def validate(self) -> None:
        """Reject settings that would only fail (or silently mislead) after fitting started."""
        if not self.seeds:
            raise ConfigError("probe seeds are empty: pass at least one seed, e.g. seeds=(0, 1, 2)")
        if not self.c_grid or any(not (c > 0 and math.isfinite(c)) for c in self.c_grid):
            raise ConfigError(
                f"probe c_grid {self.c_grid!r} must be non-empty positive finite values, e.g. (0.1, 1, 10)"
            )
        fracs = (self.train_frac, self.val_frac, self.test_frac)
        if any(f <= 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
            raise ConfigError(f"probe split fractions {fracs} must be positive and sum to 1, e.g. (0.6, 0.2, 0.2)")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"probe confidence {self.confidence} must lie in (0, 1), e.g. 0.95")
        if self.solver not in ("batched", "sklearn"):
            raise ConfigError(f"probe solver {self.solver!r} is not one of batched, sklearn")
        if self.max_iter < 1:
            raise ConfigError(f"probe max_iter {self.max_iter} must be at least 1")


@dataclass(frozen=True)
class Split:
    """Example indices of one grouped train/validation/test split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class ProbeFit:
    """One probe chosen on validation and scored on test.

    `weights`/`intercept` live in the ORIGINAL feature space (standardisation undone) so a
    direction can be applied to raw activations, e.g. by `concept_direction` for steering.
    """

    best_C: float  # noqa: N815 - name fixed by the analyzer's report schema
    accuracy: float
    f1: float
    val_accuracy: float
    weights: np.ndarray
    intercept: np.ndarray
    classes: list[Any]


@dataclass
class SeedResult:
    """Per-seed numbers, kept so confidence intervals can be audited."""

    seed: int
    accuracy: float
    f1: float
    best_C: float  # noqa: N815 - name fixed by the analyzer's report schema
    chance: float
    control_accuracy: float | None = None
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0


@dataclass
class LayerProbe:
    """Summary of one layer over seeds.

    `chance` is the test accuracy of always predicting the training-majority class (mean over
    seeds); `selectivity` is None when no word types were given for a control task.
    `weights` is the mean over seeds of the original-space coefficients: shape [d] for a binary
    task (pointing towards `classes[1]`), [K, d] otherwise.
    """

    layer: Any
    accuracy_mean: float
    accuracy_ci: tuple[float, float]
    f1_mean: float
    f1_ci: tuple[float, float]
    control_accuracy_mean: float | None
    selectivity: float | None
    chance: float
    best_C: float  # noqa: N815 - name fixed by the analyzer's report schema
    per_seed: list[SeedResult]
    weights: np.ndarray = field(repr=False)
    intercept: np.ndarray = field(repr=False)

    @property
    def direction(self) -> np.ndarray:
        """Unit-norm probe direction (binary: towards `classes[1]`); what steering needs."""
        w = self.weights if self.weights.ndim == 1 else self.weights[0]
        norm = float(np.linalg.norm(w))
        return w / norm if norm > 0 else w


@dataclass
class ProbeReport:
    """All layers of one probing run plus the baselines needed to read them."""

    layers: list[LayerProbe]
    majority_baseline: float
    n_examples: int
    n_groups: int
    classes: list[Any]

    def layer(self, layer: Any) -> LayerProbe:
        """Look a layer up by its key, so callers need not know the list order."""
        for lp in self.layers:
            if lp.layer == layer:
                return lp
        raise KeyError(f"no probe for layer {layer!r}; have {[lp.layer for lp in self.layers]}")

    def table(self) -> Any:
        """One row per layer; pandas is imported lazily because the engine itself does not need it."""
        import pandas as pd

        rows = []
        for lp in self.layers:
            rows.append(
                {
                    "layer": lp.layer,
                    "accuracy": lp.accuracy_mean,
                    "accuracy_ci_low": lp.accuracy_ci[0],
                    "accuracy_ci_high": lp.accuracy_ci[1],
                    "f1": lp.f1_mean,
                    "f1_ci_low": lp.f1_ci[0],
                    "f1_ci_high": lp.f1_ci[1],
                    "control_accuracy": lp.control_accuracy_mean,
                    "selectivity": lp.selectivity,
                    "chance": lp.chance,
                    "best_C": lp.best_C,
                    "n_seeds": len(lp.per_seed),
                }
            )
        return pd.DataFrame(rows)


@dataclass
class MDLResult:
    """Online codelength in bits; compression > 1 means the probe extracts the labels cheaply."""

    codelength_bits: float
    uniform_bits: float
    compression: float
    block_ends: list[int]
    block_bits: list[float]
    n_examples: int
    n_classes: int


# ----------------------------------------------------------------------------- input handling


def _to_numpy(x: Any) -> np.ndarray:
    """Accept torch tensors and arrays alike; float64 keeps lbfgs well conditioned."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _features_dict(features: Any) -> dict[Any, np.ndarray]:
    if isinstance(features, Mapping):
        if not features:
            raise ConfigError("probe features are empty: pass {layer: Tensor[n, d]} with at least one layer")
        out = {k: _to_numpy(v) for k, v in features.items()}
    else:
        arr = _to_numpy(features)
        if arr.ndim != 3:
            raise ConfigError(
                f"probe features have shape {tuple(arr.shape)}: pass a [layers, n, d] tensor or {{layer: [n, d]}}"
            )
        out = {i: arr[i] for i in range(arr.shape[0])}
    n_rows = None
    for layer, x in out.items():
        if x.ndim != 2:
            raise ConfigError(f"probe features for layer {layer!r} have shape {tuple(x.shape)}: pass [n, d] per layer")
        if n_rows is None:
            n_rows = x.shape[0]
        elif x.shape[0] != n_rows:
            raise ConfigError(
                f"probe features for layer {layer!r} have {x.shape[0]} rows but others have {n_rows}: "
                "capture every layer over the same examples"
            )
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise ConfigError(
                f"probe features for layer {layer!r} contain non-finite values in {bad} rows: "
                "drop those examples or fix the capture (e.g. run in float32)"
            )
    return out


def _encode_labels(labels: Sequence[Any], n: int, what: str = "labels") -> tuple[np.ndarray, list[Any]]:
    """Integer-code labels so strings and ints share one path; class order is sorted (deterministic)."""
    if len(labels) != n:
        raise ConfigError(f"probe got {len(labels)} {what} for {n} feature rows: pass exactly one per example")
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.astype(np.int64), classes.tolist()


def _split_counts(n_groups: int, config: ProbeConfig) -> tuple[int, int, int]:
    n_test = max(1, int(round(config.test_frac * n_groups)))
    n_val = max(1, int(round(config.val_frac * n_groups)))
    return n_groups - n_val - n_test, n_val, n_test


def grouped_split(groups: Sequence[int], seed: int, config: ProbeConfig | None = None) -> Split:
    """Shuffle whole groups (texts) and cut them train/val/test, so no text straddles two splits.

    Splitting by group count rather than example count keeps the split deterministic and simple;
    with many short texts the example fractions come out close to the group fractions.
    """
    config = config or ProbeConfig()
    g = np.asarray(groups)
    uniq = np.unique(g)
    n_train, n_val, _ = _split_counts(len(uniq), config)
    if n_train < 1:
        raise ConfigError(
            f"probe needs at least 3 groups (texts) for a train/validation/test split, got {len(uniq)}: "
            "pass more texts or per-example group ids"
        )
    order = np.random.default_rng(seed).permutation(uniq)
    train_g, val_g, test_g = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return Split(
        train=np.flatnonzero(np.isin(g, train_g)),
        val=np.flatnonzero(np.isin(g, val_g)),
        test=np.flatnonzero(np.isin(g, test_g)),
    )


def control_labels(word_types: Sequence[str], labels: Sequence[Any], seed: int) -> np.ndarray:
    """Hewitt & Liang control task: one random label per word TYPE, from the empirical label distribution.

    Because the label depends only on the type, a probe can only score well by memorising types,
    which is exactly the capacity selectivity is meant to subtract out.
    """
    if len(word_types) != len(labels):
        raise ConfigError(
            f"control task got {len(word_types)} word types for {len(labels)} labels: pass one word type per example"
        )
    lab = np.asarray(labels)
    classes, counts = np.unique(lab, return_counts=True)
    types = np.asarray([str(t) for t in word_types])
    uniq_types, inverse = np.unique(types, return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(classes), size=len(uniq_types), p=counts / counts.sum())
    return classes[drawn][inverse]


# ----------------------------------------------------------------------------- fitting


def _to_original_space(model: LogisticRegression, scaler: StandardScaler) -> tuple[np.ndarray, np.ndarray]:
    """Undo standardisation: w·(x-mu)/s + b == (w/s)·x + (b - sum(w*mu/s))."""
    coef = model.coef_ / scaler.scale_
    intercept = model.intercept_ - coef @ scaler.mean_
    return coef, intercept


def fit_probe(x: np.ndarray, y: np.ndarray, split: Split, c_grid: Sequence[float], *, max_iter: int = 1000) -> ProbeFit:
    """Fit along the C grid (warm-started), pick C on validation accuracy, score that probe on test.

    `y` must be integer codes 0..K-1 (see `probe_layers`); macro-F1 is over all K classes so a
    class missing from the test split still counts against the probe.
    """
    y = np.asarray(y)
    n_classes = int(y.max()) + 1
    scaler = StandardScaler().fit(x[split.train])
    xtr, xva, xte = (scaler.transform(x[idx]) for idx in (split.train, split.val, split.test))
    model = LogisticRegression(max_iter=max_iter, warm_start=True)
    best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(c_grid):
            model.set_params(C=c)
            model.fit(xtr, y[split.train])
            val_acc = float((model.predict(xva) == y[split.val]).mean())
            if best is None or val_acc > best[1]:
                coef, intercept = _to_original_space(model, scaler)
                best = (c, val_acc, model.predict(xte), coef.copy(), intercept.copy())
    assert best is not None  # c_grid validated non-empty
    c, val_acc, pred, coef, intercept = best
    y_test = y[split.test]
    return ProbeFit(
        best_C=float(c),
        accuracy=float((pred == y_test).mean()),
        f1=float(f1_score(y_test, pred, labels=np.arange(n_classes), average="macro", zero_division=0)),
        val_accuracy=val_acc,
        weights=coef[0] if coef.shape[0] == 1 else coef,
        intercept=intercept,
        classes=list(range(n_classes)),
    )


def _stack(features: Mapping[Any, np.ndarray]) -> Any:
    import torch

    return torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in features.values()])


def fit_probes_batched(
    features: Mapping[Any, np.ndarray],
    label_sets: Sequence[np.ndarray],
    split: Split,
    c_grid: Sequence[float],
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    stacked: Any = None,
) -> dict[Any, list[ProbeFit]]:
    """`fit_probe` for every layer and label set at once (batched L-BFGS, `batched_logistic`).

    Same recipe as `fit_probe`: standardise on the training split, fit every C, pick C on
    validation accuracy (ties to the stronger regularisation), score on test, weights mapped
    back to the original feature space. Returns {layer: [ProbeFit per label set]}. `stacked`
    (the features as one [L, n, d] float64 tensor in `features` order) saves a copy per call
    when the same features are fitted under several seeds.
    """
    import torch

    from .batched_logistic import fit_logistic

    keys = list(features)
    x = _stack(features) if stacked is None else stacked  # [L, n, d]
    train = x[:, split.train]
    mean = train.mean(1, keepdim=True)
    scale = train.std(1, unbiased=False, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # as StandardScaler: constant features stay
    z = (x - mean) / scale
    c_sorted = sorted(float(c) for c in c_grid)
    c_values = torch.tensor(c_sorted, dtype=torch.float64)
    out: dict[Any, list[ProbeFit]] = {k: [] for k in keys}
    for y in label_sets:
        y = np.asarray(y)
        n_classes = int(y.max()) + 1
        labels = torch.as_tensor(y[split.train], dtype=torch.long).expand(len(c_sorted), -1)
        fit = fit_logistic(z[:, split.train], labels, n_classes, c_values, max_iter=max_iter, tol=tol)
        val_pred = fit.predict(z[:, split.val])  # [L, J, m]
        val_acc = (val_pred == torch.as_tensor(y[split.val])).double().mean(-1)  # [L, J]
        best = val_acc.argmax(-1)  # first maximum: the smallest C among ties
        test_pred = fit.predict(z[:, split.test])
        y_test = y[split.test]
        for i, key in enumerate(keys):
            j = int(best[i])
            pred = test_pred[i, j].numpy()
            w = fit.weights[i, j] / scale[i, 0][:, None]  # [d, k] in the original space
            b = fit.bias[i, j] - mean[i, 0] @ w
            out[key].append(
                ProbeFit(
                    best_C=c_sorted[j],
                    accuracy=float((pred == y_test).mean()),
                    f1=float(f1_score(y_test, pred, labels=np.arange(n_classes), average="macro", zero_division=0)),
                    val_accuracy=float(val_acc[i, j]),
                    weights=w[:, 0].numpy() if w.shape[1] == 1 else w.T.numpy(),
                    intercept=b.numpy(),
                    classes=list(range(n_classes)),
                )
            )
    return out


def _ci(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """Student-t interval: with 3 seeds a percentile interval would just be min..max."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2 or float(arr.std(ddof=1)) == 0.0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return mean - half, mean + half


def _check_split(split: Split, codes: np.ndarray, seed: int, n_groups: int, what: str) -> None:
    if len(np.unique(codes[split.train])) < 2:
        raise ConfigError(
            f"probe split for seed {seed} has only one {what} class in training ({len(split.train)} examples, "
            f"{n_groups} groups): pass more texts or a more balanced label set"
        )


@dataclass
class _Plan:
    codes: np.ndarray
    classes: list[Any]
    n_groups: int
    control_codes: dict[int, np.ndarray]
    splits: dict[int, Split]


def _plan(
    labels: Sequence[Any], groups: Sequence[int], word_types: Sequence[str] | None, n: int, config: ProbeConfig
) -> _Plan:
    codes, classes = _encode_labels(labels, n)
    if len(classes) < 2:
        raise ConfigError(f"probe labels have a single class {classes!r}: a probe needs at least 2 label values")
    if len(groups) != n:
        raise ConfigError(f"probe got {len(groups)} groups for {n} feature rows: pass one group (text id) per example")
    group_arr = np.asarray(groups)
    n_groups = len(np.unique(group_arr))
    n_train_g, n_val_g, n_test_g = _split_counts(n_groups, config)
    if n_train_g < 1:
        raise ConfigError(
            f"probe needs at least 3 groups (texts) for a train/validation/test split, got {n_groups} "
            f"groups over {n} examples: pass more texts"
        )
    if n < 3 * len(classes):
        raise ConfigError(
            f"probe has {n} examples for {len(classes)} classes: pass at least {3 * len(classes)} examples"
        )

    control_codes: dict[int, np.ndarray] = {}
    if word_types is not None:
        if len(word_types) != n:
            raise ConfigError(
                f"probe got {len(word_types)} word types for {n} feature rows: pass one word type per example"
            )
        for seed in config.seeds:
            control_codes[seed] = np.unique(control_labels(word_types, labels, seed), return_inverse=True)[1]

    splits = {seed: grouped_split(group_arr, seed, config) for seed in config.seeds}
    for seed, split in splits.items():
        _check_split(split, codes, seed, n_groups, "label")
        if seed in control_codes:
            _check_split(split, control_codes[seed], seed, n_groups, "control-label")

    return _Plan(codes, classes, n_groups, control_codes, splits)


def check_probe_inputs(
    labels: Sequence[Any],
    groups: Sequence[int],
    *,
    word_types: Sequence[str] | None = None,
    config: ProbeConfig | None = None,
    what: str = "probe",
) -> None:
    """Every check `probe_layers` makes that needs no features: run it before weights load.

    Labels, groups and word types alone decide whether the splits (seeded, so the same ones
    `probe_layers` will draw) hold two classes in training, whether there are enough texts
    for a train/validation/test split, and whether the control task is usable.
    """
    config = config or ProbeConfig()
    config.validate()
    try:
        _plan(labels, groups, word_types, len(labels), config)
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None


def probe_layers(
    features: Mapping[Any, Any] | Any,
    labels: Sequence[Any],
    groups: Sequence[int],
    *,
    word_types: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
) -> ProbeReport:
    """Probe every layer over several seeds; all input checks run before the first fit.

    `word_types` (the token string of each example) switches on the control task; without it
    `control_accuracy_mean` and `selectivity` are None.
    """
    config = config or ProbeConfig()
    if seeds is not None:
        config = ProbeConfig(**{**config.__dict__, "seeds": tuple(int(s) for s in seeds)})
    config.validate()

    feats = _features_dict(features)
    n = next(iter(feats.values())).shape[0]
    plan = _plan(labels, groups, word_types, n, config)
    codes, classes, n_groups = plan.codes, plan.classes, plan.n_groups
    control_codes, splits = plan.control_codes, plan.splits

    fits: dict[int, dict[Any, tuple[ProbeFit, ProbeFit | None]]] = {}
    stacked = _stack(feats) if config.solver == "batched" else None  # one copy for every seed
    for seed in config.seeds:
        label_sets = [codes] + ([control_codes[seed]] if seed in control_codes else [])
        if config.solver == "sklearn":
            per_layer = {
                layer: [fit_probe(x, y, splits[seed], config.c_grid, max_iter=config.max_iter) for y in label_sets]
                for layer, x in feats.items()
            }
        else:
            per_layer = fit_probes_batched(
                feats, label_sets, splits[seed], config.c_grid, max_iter=config.max_iter, stacked=stacked
            )
        fits[seed] = {layer: (pair[0], pair[1] if len(pair) > 1 else None) for layer, pair in per_layer.items()}

    layers: list[LayerProbe] = []
    for layer in feats:
        per_seed: list[SeedResult] = []
        coefs: list[np.ndarray] = []
        intercepts: list[np.ndarray] = []
        for seed in config.seeds:
            split = splits[seed]
            fit, control_fit = fits[seed][layer]
            majority = np.bincount(codes[split.train], minlength=len(classes)).argmax()
            ctrl_acc = None if control_fit is None else control_fit.accuracy
            per_seed.append(
                SeedResult(
                    seed=seed,
                    accuracy=fit.accuracy,
                    f1=fit.f1,
                    best_C=fit.best_C,
                    chance=float((codes[split.test] == majority).mean()),
                    control_accuracy=ctrl_acc,
                    n_train=len(split.train),
                    n_val=len(split.val),
                    n_test=len(split.test),
                )
            )
            coefs.append(fit.weights)
            intercepts.append(fit.intercept)
        accs = [r.accuracy for r in per_seed]
        f1s = [r.f1 for r in per_seed]
        acc_mean = float(np.mean(accs))
        ctrl_mean = None if not control_codes else float(np.mean([r.control_accuracy for r in per_seed]))
        c_counts = Counter(r.best_C for r in per_seed)
        top = max(c_counts.values())
        layers.append(
            LayerProbe(
                layer=layer,
                accuracy_mean=acc_mean,
                accuracy_ci=_ci(accs, config.confidence),
                f1_mean=float(np.mean(f1s)),
                f1_ci=_ci(f1s, config.confidence),
                control_accuracy_mean=ctrl_mean,
                selectivity=None if ctrl_mean is None else acc_mean - ctrl_mean,
                chance=float(np.mean([r.chance for r in per_seed])),
                best_C=min(c for c, k in c_counts.items() if k == top),
                per_seed=per_seed,
                weights=np.mean(coefs, axis=0),
                intercept=np.mean(intercepts, axis=0),
            )
        )

    return ProbeReport(
        layers=layers,
        majority_baseline=float(np.bincount(codes).max() / n),
        n_examples=n,
        n_groups=n_groups,
        classes=classes,
    )


# ----------------------------------------------------------------------------- MDL


def _block_ends(n: int, fractions: Sequence[float]) -> list[int]:
    ends = sorted({min(n, max(1, math.ceil(f / 100.0 * n))) for f in fractions})
    if ends[-1] != n:
        ends.append(n)
    return ends


def online_codelength(
    features: Any,
    labels: Sequence[Any],
    *,
    groups: Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_MDL_FRACTIONS,
    seed: int = 0,
    C: float = 1.0,  # noqa: N803 - sklearn's name for the regularisation strength
    max_iter: int = 1000,
) -> MDLResult:
    """Voita & Titov online code: transmit block i+1 with a probe trained on blocks 1..i.

    `fractions` are percentages of the data. The first block is sent with the uniform code. With
    `groups`, examples are ordered text by text (texts shuffled by `seed`) so a block boundary
    splits at most one text; otherwise examples are shuffled individually. A class unseen so far
    gets a tiny probability floor instead of an infinite cost.
    """
    x = _to_numpy(features)
    if x.ndim != 2:
        raise ConfigError(f"MDL features have shape {tuple(x.shape)}: pass one layer as [n, d]")
    if not np.isfinite(x).all():
        raise ConfigError("MDL features contain non-finite values: drop those examples or fix the capture")
    n = x.shape[0]
    codes, classes = _encode_labels(labels, n)
    k = len(classes)
    if k < 2:
        raise ConfigError(f"MDL labels have a single class {classes!r}: a code needs at least 2 label values")
    if not fractions or any(not 0 < f <= 100 for f in fractions):
        raise ConfigError(f"MDL fractions {tuple(fractions)!r} must be percentages in (0, 100]")
    if not (C > 0 and math.isfinite(C)):
        raise ConfigError(f"MDL C={C} must be positive and finite")
    ends = _block_ends(n, fractions)
    if len(ends) < 2:
        raise ConfigError(f"MDL needs at least 2 blocks but {n} examples give {len(ends)}: pass more examples")
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != n:
            raise ConfigError(f"MDL got {len(groups)} groups for {n} feature rows: pass one group per example")
        g = np.asarray(groups)
        rank = {gid: i for i, gid in enumerate(rng.permutation(np.unique(g)))}
        order = np.argsort(np.array([rank[v] for v in g]), kind="stable")
    else:
        order = rng.permutation(n)
    x, codes = x[order], codes[order]

    floor = 1e-6
    block_bits = [ends[0] * math.log2(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for start, stop in zip(ends[:-1], ends[1:], strict=True):
            y_prev, y_next = codes[:start], codes[start:stop]
            seen = np.unique(y_prev)
            probs = np.zeros((stop - start, k))
            if len(seen) < 2:
                # Laplace-smoothed frequencies: a one-class prefix cannot train a probe.
                probs[:] = (np.bincount(y_prev, minlength=k) + 1.0) / (start + k)
            else:
                scaler = StandardScaler().fit(x[:start])
                model = LogisticRegression(C=C, max_iter=max_iter)
                model.fit(scaler.transform(x[:start]), y_prev)
                probs[:, model.classes_] = model.predict_proba(scaler.transform(x[start:stop]))
            probs = (1 - floor) * probs + floor / k
            block_bits.append(float(-np.log2(probs[np.arange(len(y_next)), y_next]).sum()))
    online = float(sum(block_bits))
    uniform = n * math.log2(k)
    return MDLResult(
        codelength_bits=online,
        uniform_bits=uniform,
        compression=uniform / online,
        block_ends=ends,
        block_bits=block_bits,
        n_examples=n,
        n_classes=k,
    )
