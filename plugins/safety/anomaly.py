"""Anomaly-detection engine: is this input unlike the normal texts the detector was fitted on?

`AnomalyDetector` is a plain Python API (the `anomaly_detection` analyzer, the
`detect-anomaly` command, a server and training monitors all call it): `fit` on normal texts,
`score` new texts (per text, optionally per token), `save` / `load` as an artifact
(safetensors + JSON via `interpsuite.artifacts`, kind "anomaly_detector", never pickle).

Method (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples
and adversarial attacks"): per chosen layer, a Gaussian with mean m_l and covariance S_l is
fitted to the pooled residual of the normal texts; a text's layer score is its squared
Mahalanobis distance d_l^2 = (x - m_l)^T S_l^{-1} (x - m_l). For Gaussian data d^2 follows a
chi-square with d degrees of freedom (mean d). Option `method: knn` scores the distance to the
k-th nearest normal text instead (Sun et al. 2022, on L2-normalised features).

Design choices and why:

* Streaming fit, bounded memory. Features come one batch at a time and only their moments are
  kept, per layer and in float64: n, S1 = sum(y), S2 = sum(y y^T), T = sum(|y|^2 y) and
  Q = sum(|y|^4), with y = x - c shifted by the first batch's mean c (shifting keeps the raw
  moments from cancelling catastrophically when the residual has a large mean). Memory is
  O(d^2) per layer whatever the number of texts. kNN must keep examples: its bank is a uniform
  reservoir sample of at most `max_bank` training texts (seeded), so it is bounded too.
* Ledoit-Wolf shrinkage computed exactly from those moments. sklearn's `ledoit_wolf_shrinkage`
  needs the centred empirical covariance (from S1, S2) and sum_k |x_k - m|^4, which expands
  into Q, T.m, m^T S2 m, trace(S2), S1.m and n, all streamed; so the shrinkage and the shrunk
  covariance equal sklearn's `LedoitWolf().fit(X)` on the full sample (tested). The shrunk
  covariance (1 - s) S + s (tr S / d) I is positive definite even when n < d, which is how a
  normal set smaller than the feature dimension is handled; the detector's `notes` say so with
  the numbers.
* Precomputed whitening. The inverse Cholesky factor W_l (S_l = L L^T, W_l = L^{-1}) is
  stored (float32; the mean stays float64), so scoring is one forward pass plus
  d_l^2 = |W_l (x - m_l)|^2 per layer: one batched [L, n, d] x [L, d, d] matmul.
* Layer aggregation. Per-layer scores have different scales, so each is standardised by the
  mean and standard deviation of that layer's scores on held-out normal texts (z_l), and the
  text's score is the mean of z_l over layers (`aggregate: mean`, robust: an anomaly seen by
  many layers) or the max (`aggregate: max`, sensitive: an anomaly seen by one layer).
* The threshold is the (1 - fpr) quantile ("higher" interpolation) of the aggregated score of
  held-out normal texts (a fraction `held_out` of the normal set, never used to fit the
  Gaussians, whose in-sample distances are biased low). A text is flagged when its score is
  above the threshold.
* Per-token scores (`token_scores=True` at fit) use a second set of Gaussians fitted to every
  real token of the normal texts (a token's residual is not distributed like a text mean), with
  their own held-out standardisation and threshold.
* Feature capture is one forward pass per batch for every chosen layer, with
  `logits_to_keep=1`: it gives the same pooled features as `probing.capture.pooled_features`
  (tested) but keeps every token for per-token scores and never builds the [batch, pos, vocab]
  logits, which dominate memory for a 49k-token vocabulary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interpsuite.artifacts import Artifact, ModelFingerprint, load_artifact, save_artifact
from interpsuite.errors import ConfigError

from ..probing.capture import Progress, no_progress
from .texts import check_texts

__all__ = [
    "AGGREGATES",
    "KIND",
    "METHODS",
    "AnomalyDetector",
    "AnomalyScores",
    "DetectorConfig",
    "LayerStats",
    "Moments",
    "calibrate",
    "check_texts",
    "gaussians_from_moments",
    "ledoit_wolf_from_moments",
    "whitening",
]

KIND = "anomaly_detector"
METHODS = ("mahalanobis", "knn")
POOLINGS = ("mean", "last")
AGGREGATES = ("mean", "max")

# --------------------------------------------------------------------------------------------
# streamed moments and Ledoit-Wolf


class Moments:
    """Shifted raw moments of a stream of d-vectors (float64): mean, covariance and Ledoit-Wolf's inputs."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1 = torch.zeros(dim, dtype=torch.float64)
        self.s2 = torch.zeros(dim, dim, dtype=torch.float64)
        self.t = torch.zeros(dim, dtype=torch.float64)
        self.q = 0.0

    def update(self, x: torch.Tensor) -> None:
        """Add rows x [m, d] (any float dtype, any device: moved to CPU float64)."""
        x = x.detach().to("cpu", torch.float64)
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(0)
        y = x - self.shift
        sq = (y * y).sum(1)
        self.n += int(y.shape[0])
        self.s1 += y.sum(0)
        self.s2 += y.T @ y
        self.t += (sq.unsqueeze(1) * y).sum(0)
        self.q += float((sq * sq).sum())

    @property
    def mean(self) -> torch.Tensor:
        assert self.shift is not None
        return self.shift + self.s1 / self.n

    def empirical_covariance(self) -> torch.Tensor:
        """The maximum-likelihood covariance (divides by n, as sklearn's empirical_covariance)."""
        m = self.s1 / self.n
        return self.s2 / self.n - torch.outer(m, m)

    def centred_fourth(self) -> float:
        """sum_k |x_k - mean|^4, expanded into the streamed moments (see the module docstring)."""
        m = self.s1 / self.n
        mm = float(m @ m)
        return (
            self.q
            - 4.0 * float(self.t @ m)
            + 4.0 * float(m @ (self.s2 @ m))
            + 2.0 * mm * float(torch.trace(self.s2))
            - 4.0 * mm * float(self.s1 @ m)
            + self.n * mm * mm
        )


def ledoit_wolf_from_moments(moments: Moments) -> tuple[torch.Tensor, float, float]:
    """(shrunk covariance, shrinkage, mu = trace/d): sklearn's Ledoit-Wolf estimator, from moments.

    Follows `sklearn.covariance.ledoit_wolf_shrinkage` line by line with the sums over samples
    replaced by their moment expansions; sklearn's own result on the full sample is the reference."""
    n, d = moments.n, moments.dim
    emp = moments.empirical_covariance()
    trace = float(torch.trace(emp))
    mu = trace / d
    if d == 1:
        return emp.clone(), 0.0, mu
    delta_sum = float((emp * emp).sum())  # = sum((X^T X)^2) / n^2
    beta = (moments.centred_fourth() / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else max(0.0, beta / delta)
    shrunk = (1.0 - shrinkage) * emp
    shrunk.diagonal().add_(shrinkage * mu)
    return shrunk, float(shrinkage), mu


def whitening(cov: torch.Tensor, mu: float) -> tuple[torch.Tensor, float]:
    """(W = L^{-1} with cov = L L^T, jitter added to the diagonal, 0 when none was needed)."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    jitter = 0.0
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return torch.linalg.solve_triangular(chol, eye, upper=False), jitter
        jitter = max(jitter * 10.0, 1e-10 * max(mu, 1e-30))
    raise ConfigError("the covariance of the normal texts is not positive definite even with jitter; give more texts")


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class DetectorConfig:
    """Every fit option; `validate(info)` checks them all without weights."""

    layers: list[int] | None = None  # null = every layer
    hook_point: str = "resid_post"  # per-block site whose activations are scored
    method: str = "mahalanobis"  # mahalanobis (Lee et al. 2018) | knn (k-th nearest normal text)
    k: int = 10  # knn: which neighbour's distance is the score
    pooling: str = "mean"  # a text's feature: mean over its real tokens | its last token
    aggregate: str = "mean"  # layer aggregation of standardised scores: mean | max
    fpr: float = 0.05  # target false-positive rate of the threshold, on held-out normal texts
    held_out: float = 0.25  # fraction of the normal texts kept out of the fit to set the threshold
    token_scores: bool = False  # also fit token-level Gaussians (per-token scores; mahalanobis only)
    max_bank: int = 10000  # knn: most training texts kept (uniform reservoir sample)
    batch_size: int = 16
    max_length: int | None = 128
    seed: int = 0  # the held-out split and the knn reservoir

    def validate(self, info, what: str = "anomaly detector") -> DetectorConfig:
        from interpsuite.analyzer import check_layers

        from ..probing.capture import check_block_site

        if self.method not in METHODS:
            raise ConfigError(f"{what}.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"{what}.pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"{what}.aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")
        if not 0.0 < float(self.fpr) < 1.0:
            raise ConfigError(f"{what}.fpr: {self.fpr} must lie strictly between 0 and 1 (e.g. 0.05)")
        if not 0.0 < float(self.held_out) < 1.0:
            raise ConfigError(f"{what}.held_out: {self.held_out} must lie strictly between 0 and 1 (e.g. 0.25)")
        if int(self.k) < 1:
            raise ConfigError(f"{what}.k: {self.k}; the k-th neighbour needs k >= 1")
        if int(self.max_bank) < max(2, int(self.k)):
            raise ConfigError(f"{what}.max_bank: {self.max_bank}; it must be at least k ({self.k}) and 2")
        if self.token_scores and self.method != "mahalanobis":
            raise ConfigError(f"{what}.token_scores: per-token scores need method mahalanobis, not {self.method!r}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"{what}.batch_size: {self.batch_size}; give a positive batch size")
        if self.max_length is not None and int(self.max_length) < 1:
            raise ConfigError(f"{what}.max_length: {self.max_length}; give a positive length or null")
        check_block_site(info, self.hook_point, f"{what}.hook_point")
        layers = check_layers(info, self.layers, f"{what}.layers")
        return DetectorConfig(**{**asdict(self), "layers": layers})

    def check_sizes(self, n_texts: int, what: str) -> tuple[int, int]:
        """(n_train, n_calibration) for n normal texts, or one line saying how many are needed."""
        n_cal = max(2, int(round(self.held_out * n_texts)))
        n_train = n_texts - n_cal
        need = max(2, int(self.k)) if self.method == "knn" else 2
        if n_train < need:
            raise ConfigError(
                f"{what}: {n_texts} normal texts leave {n_train} to fit after holding out {n_cal} "
                f"(held_out={self.held_out}); give at least {need + 2} texts"
            )
        return n_train, n_cal


# --------------------------------------------------------------------------------------------
# capture


def _by_length(model, texts: Sequence[str]) -> list[int]:
    """Indices of texts by token count (stable): batches of similar lengths pad less.

    Right padding with an attention mask leaves every real token's activations unchanged, so
    the order changes no score beyond float rounding of differently shaped matmuls."""
    lengths = model.token_lengths(list(texts))
    return sorted(range(len(texts)), key=lengths.__getitem__)


@dataclass
class _Batch:
    start: int
    pooled: list[torch.Tensor]  # per layer [b, d] float64 CPU
    tokens: list[torch.Tensor] | None  # per layer [n_real_tokens, d] float64 CPU
    counts: list[int]  # real tokens per text
    token_strings: list[list[str]]


def _capture(
    model,
    texts: Sequence[str],
    hooks: Sequence[str],
    pooling: str,
    *,
    batch_size: int,
    max_length: int | None,
    keep_tokens: bool,
    progress: Progress,
    desc: str,
) -> Iterator[_Batch]:
    """One forward pass per batch capturing every hook; pooled (and token) features per layer."""
    for start in progress(range(0, len(texts), batch_size), desc):
        chunk = list(texts[start : start + batch_size])
        batch = model.tokenize(chunk, max_length)
        cache = model.forward(batch, capture=list(hooks), logits_to_keep=1).cache
        mask = batch.attention_mask.bool()
        counts = [int(c) for c in mask.sum(1).tolist()]
        pooled, tokens = [], [] if keep_tokens else None
        for hook in hooks:
            acts = cache[hook].to(torch.float32)
            if acts.dim() == 4:  # per-head sites
                acts = acts.flatten(2)
            if pooling == "mean":
                weights = mask.unsqueeze(-1).to(acts.dtype)
                feat = (acts * weights).sum(1) / weights.sum(1)
            else:
                feat = acts[torch.arange(acts.shape[0], device=acts.device), batch.last_index]
            pooled.append(feat.to("cpu", torch.float64))
            if tokens is not None:
                tokens.append(acts[mask].to("cpu", torch.float64))
        yield _Batch(start, pooled, tokens, counts, [list(t) for t in batch.tokens])


# --------------------------------------------------------------------------------------------
# scores


@dataclass
class AnomalyScores:
    """Scores of n texts at L layers (and per token when asked for)."""

    layers: list[int]
    per_layer: torch.Tensor  # [n, L] squared Mahalanobis distance (or knn distance)
    standardized: torch.Tensor  # [n, L] z-scores against held-out normal texts
    score: torch.Tensor  # [n] aggregated (the flagged quantity)
    flags: torch.Tensor  # [n] bool: score > threshold
    threshold: float
    tokens: list[list[str]] | None = None
    token_per_layer: list[torch.Tensor] | None = None  # per text [t, L]
    token_score: list[torch.Tensor] | None = None  # per text [t]
    token_flags: list[torch.Tensor] | None = None

    def table(self, texts: Sequence[str] | None = None):
        """One row per text: aggregated score, flag and every layer's raw score."""
        import pandas as pd

        data: dict[str, Any] = {}
        if texts is not None:
            data["text"] = list(texts)
        data["score"] = self.score.numpy()
        data["flag"] = self.flags.numpy()
        for i, layer in enumerate(self.layers):
            data[f"layer_{layer}"] = self.per_layer[:, i].numpy()
        return pd.DataFrame(data)


@dataclass
class LayerStats:
    """The fitted statistics of one level (texts, or tokens): per-layer model + standardisation.

    Works on features alone (no model), so synthetic data can exercise the scoring path."""

    mean: torch.Tensor | None  # [L, d] (mahalanobis)
    whiten: torch.Tensor | None  # [L, d, d] float32 (see gaussians_from_moments)
    bank: torch.Tensor | None  # [L, B, d] normalised (knn)
    cal_mean: torch.Tensor  # [L]
    cal_std: torch.Tensor  # [L]
    threshold: float

    def raw(self, feats: list[torch.Tensor], k: int) -> torch.Tensor:
        """[n, L] per-layer scores of features (one [n, d] float64 tensor per layer)."""
        if not feats or feats[0].shape[0] == 0:
            return torch.zeros(0, len(feats), dtype=torch.float64)
        x = torch.stack(feats)  # [L, n, d]
        if self.whiten is not None:
            centred = (x - self.mean.unsqueeze(1)).to(torch.float32)
            white = torch.bmm(centred, self.whiten.transpose(1, 2)).to(torch.float64)
            return (white * white).sum(-1).T.contiguous()
        assert self.bank is not None
        query = torch.nn.functional.normalize(x.to(torch.float32), dim=-1)
        dist = torch.cdist(query, self.bank)  # [L, n, B]
        return dist.kthvalue(k, dim=-1).values.to(torch.float64).T.contiguous()

    def standardize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.cal_mean) / self.cal_std

    @staticmethod
    def aggregate(z: torch.Tensor, how: str) -> torch.Tensor:
        if z.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float64)
        return z.mean(1) if how == "mean" else z.max(1).values


def calibrate(raw: torch.Tensor, how: str, fpr: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(per-layer mean, std, threshold at fpr) from held-out normal scores [n, L]."""
    cal_mean = raw.mean(0)
    cal_std = raw.std(0) if raw.shape[0] > 1 else torch.ones_like(cal_mean)
    cal_std = torch.where(cal_std > 0, cal_std, torch.ones_like(cal_std))
    agg = LayerStats.aggregate((raw - cal_mean) / cal_std, how)
    threshold = float(torch.quantile(agg, 1.0 - fpr, interpolation="higher"))
    return cal_mean, cal_std, threshold


# --------------------------------------------------------------------------------------------
# the detector


@dataclass
class AnomalyDetector:
    """A fitted detector: `fit`, `score`, `save`, `load` (see the module docstring)."""

    config: DetectorConfig
    layers: list[int]
    dim: int
    text_level: LayerStats
    token_level: LayerStats | None
    fingerprint: ModelFingerprint
    n_train: int
    n_calibration: int
    shrinkage: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fit_seconds: float = 0.0
    _checked: int | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls,
        model,
        texts: Sequence[str],
        config: DetectorConfig | None = None,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> AnomalyDetector:
        """Fit on normal texts, streaming; options are DetectorConfig fields (layers, method, fpr, ...)."""
        started = time.perf_counter()
        what = "anomaly detector fit"
        config = DetectorConfig(**{**asdict(config or DetectorConfig()), **options})
        config = config.validate(model.info, "anomaly detector")
        texts = check_texts(texts, what)
        n_train, n_cal = config.check_sizes(len(texts), what)
        progress = progress or no_progress
        order = np.random.default_rng(config.seed).permutation(len(texts))
        train = [texts[i] for i in sorted(order[n_cal:])]
        calibration = [texts[i] for i in sorted(order[:n_cal])]
        # batches of similar length waste less compute on padding; moments do not depend on order
        train = [train[i] for i in _by_length(model, train)]
        calibration = [calibration[i] for i in _by_length(model, calibration)]
        layers = list(config.layers or [])
        hooks = [f"blocks.{layer}.{config.hook_point}" for layer in layers]
        capture = {
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "keep_tokens": config.token_scores,
            "progress": progress,
        }

        # pass 1: moments (or the knn reservoir) of the training texts
        text_moments: list[Moments] | None = None
        token_moments: list[Moments] | None = None
        bank: list[list[torch.Tensor]] | None = None
        rng = np.random.default_rng(config.seed + 1)
        seen = 0
        dim = 0
        for part in _capture(model, train, hooks, config.pooling, desc="anomaly fit", **capture):
            dim = int(part.pooled[0].shape[1])
            if config.method == "mahalanobis":
                text_moments = text_moments or [Moments(dim) for _ in layers]
                for moments, feat in zip(text_moments, part.pooled, strict=True):
                    moments.update(feat)
                if part.tokens is not None:
                    token_moments = token_moments or [Moments(dim) for _ in layers]
                    for moments, feat in zip(token_moments, part.tokens, strict=True):
                        moments.update(feat)
            else:
                bank, seen = _reservoir(bank, part.pooled, seen, int(config.max_bank), rng)

        notes: list[str] = []
        shrinkage: list[float] = []
        if config.method == "mahalanobis":
            assert text_moments is not None
            mean, whiten, shrinkage = gaussians_from_moments(text_moments, layers, notes, "texts")
            level = LayerStats(mean, whiten, None, torch.zeros(0), torch.zeros(0), 0.0)
            token_level = None
            if token_moments is not None:
                t_mean, t_whiten, _ = gaussians_from_moments(token_moments, layers, notes, "tokens")
                token_level = LayerStats(t_mean, t_whiten, None, torch.zeros(0), torch.zeros(0), 0.0)
        else:
            assert bank is not None
            normalised = torch.nn.functional.normalize(torch.stack([torch.stack(rows) for rows in bank]), dim=-1)
            level = LayerStats(None, None, normalised.contiguous(), torch.zeros(0), torch.zeros(0), 0.0)
            token_level = None
            if seen > config.max_bank:
                notes.append(
                    f"knn bank: a uniform sample of {config.max_bank} of the {seen} training texts "
                    f"(max_bank caps memory at {config.max_bank} x {dim} per layer)"
                )
            if seen < config.k:
                raise ConfigError(f"{what}: knn with k={config.k} needs at least k training texts; got {seen}")

        # pass 2: held-out normal texts set the standardisation and the threshold
        raw, token_raw = [], []
        for part in _capture(model, calibration, hooks, config.pooling, desc="anomaly calibrate", **capture):
            raw.append(level.raw(part.pooled, config.k))
            if token_level is not None and part.tokens is not None:
                token_raw.append(token_level.raw(part.tokens, config.k))
        cal_raw = torch.cat(raw)
        level.cal_mean, level.cal_std, level.threshold = calibrate(cal_raw, config.aggregate, config.fpr)
        if token_level is not None:
            all_tokens = torch.cat(token_raw)
            token_level.cal_mean, token_level.cal_std, token_level.threshold = calibrate(
                all_tokens, config.aggregate, config.fpr
            )
        if n_cal * config.fpr < 1:
            notes.append(
                f"threshold: {n_cal} held-out texts cannot resolve fpr={config.fpr} (smallest step 1/{n_cal}); "
                "the threshold is their highest score"
            )
        detector = cls(
            config=config,
            layers=layers,
            dim=dim,
            text_level=level,
            token_level=token_level,
            fingerprint=ModelFingerprint.of(model),
            n_train=n_train,
            n_calibration=n_cal,
            shrinkage=shrinkage,
            notes=notes,
        )
        detector._checked = id(model)
        detector.fit_seconds = time.perf_counter() - started
        return detector

    # ---------------------------------------------------------------- score
    def check_model(self, model) -> None:
        """Refuse a model other than the one fitted on (checked once per model object)."""
        if self._checked == id(model):
            return
        reason = self.fingerprint.mismatch(ModelFingerprint.of(model))
        if reason is not None:
            raise ConfigError(f"{KIND}: {reason}; fit a new one on this model")
        self._checked = id(model)

    def score(
        self,
        model,
        texts: Sequence[str] | str,
        *,
        per_token: bool = False,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> AnomalyScores:
        """Scores and flags of each text (and of each token with `per_token`): one forward pass per batch."""
        texts = check_texts(texts, "anomaly score")
        if per_token and self.token_level is None:
            raise ConfigError("anomaly score: per-token scores need a detector fitted with token_scores=True")
        self.check_model(model)
        cfg = self.config
        hooks = [f"blocks.{layer}.{cfg.hook_point}" for layer in self.layers]
        order = _by_length(model, texts)
        raws, token_raws, token_strings = [], [], []
        ordered = [texts[i] for i in order]
        for part in _capture(
            model, ordered, hooks, cfg.pooling, batch_size=batch_size or cfg.batch_size, max_length=cfg.max_length,
            keep_tokens=per_token, progress=progress or no_progress, desc="anomaly score",
        ):  # fmt: skip
            raws.append(self.text_level.raw(part.pooled, cfg.k))
            if per_token and part.tokens is not None and self.token_level is not None:
                flat = self.token_level.raw(part.tokens, cfg.k)
                token_raws.extend(torch.split(flat, part.counts))
                token_strings.extend(part.token_strings)
        position = torch.empty(len(order), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(order))  # text i was scored at position[i]
        raw = torch.cat(raws)[position]
        token_raws = [token_raws[p] for p in position.tolist()] if token_raws else token_raws
        token_strings = [token_strings[p] for p in position.tolist()] if token_strings else token_strings
        z = self.text_level.standardize(raw)
        agg = LayerStats.aggregate(z, cfg.aggregate)
        threshold = self.text_level.threshold
        scores = AnomalyScores(list(self.layers), raw, z, agg, agg > threshold, threshold)
        if per_token and self.token_level is not None:
            level = self.token_level
            scores.tokens = token_strings
            scores.token_per_layer = token_raws
            scores.token_score = [LayerStats.aggregate(level.standardize(r), cfg.aggregate) for r in token_raws]
            scores.token_flags = [s > level.threshold for s in scores.token_score]
        return scores

    # ---------------------------------------------------------------- save / load
    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (what the analyzer reports and the artifact spec holds)."""
        return {
            "config": asdict(self.config),
            "layers": list(self.layers),
            "dim": self.dim,
            "n_train": self.n_train,
            "n_calibration": self.n_calibration,
            "threshold": self.text_level.threshold,
            "token_threshold": self.token_level.threshold if self.token_level is not None else None,
            "shrinkage": list(self.shrinkage),
            "notes": list(self.notes),
            "fit_seconds": self.fit_seconds,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the detector as an artifact folder (safetensors + JSON, kind "anomaly_detector")."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, level in (("text", self.text_level), ("token", self.token_level)):
            if level is None:
                continue
            for name in ("mean", "whiten", "bank"):
                value = getattr(level, name)
                if value is not None:
                    tensors[f"{prefix}.{name}"] = value
            tensors[f"{prefix}.cal_mean"] = level.cal_mean
            tensors[f"{prefix}.cal_std"] = level.cal_std
            tensors[f"{prefix}.threshold"] = torch.tensor([level.threshold], dtype=torch.float64)
        return save_artifact(directory, KIND, tensors, self.summary(), self.fingerprint)

    @classmethod
    def load(cls, directory: str | Path, model=None) -> AnomalyDetector:
        """Read a saved detector; with `model`, refuse it unless it is the model it was fitted on."""
        artifact = load_artifact(directory, KIND)
        if model is not None:
            artifact.check_model(model)
        detector = cls._from_artifact(artifact)
        if model is not None:
            detector._checked = id(model)
        return detector

    @classmethod
    def _from_artifact(cls, artifact: Artifact) -> AnomalyDetector:
        where = f"{KIND} {artifact.path}"
        spec = artifact.spec
        try:
            config = DetectorConfig(**spec["config"])
            layers = [int(layer) for layer in spec["layers"]]
            dim = int(spec["dim"])
            n_train, n_cal = int(spec["n_train"]), int(spec["n_calibration"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: the spec is incomplete or malformed ({err}); fit and save it again") from None
        if config.method not in METHODS or config.aggregate not in AGGREGATES or config.pooling not in POOLINGS:
            raise ConfigError(f"{where}: the spec names an unknown method, aggregate or pooling; fit it again")
        levels = {}
        for prefix in ("text", "token"):
            if f"{prefix}.cal_mean" not in artifact.tensors:
                levels[prefix] = None
                continue
            levels[prefix] = _level_from(artifact.tensors, prefix, config.method, len(layers), dim, where)
        if levels["text"] is None:
            raise ConfigError(f"{where}: no text-level statistics in the file; fit and save it again")
        return cls(
            config=config,
            layers=layers,
            dim=dim,
            text_level=levels["text"],
            token_level=levels["token"],
            fingerprint=artifact.model,
            n_train=n_train,
            n_calibration=n_cal,
            shrinkage=[float(s) for s in spec.get("shrinkage") or []],
            notes=[str(n) for n in spec.get("notes") or []],
            fit_seconds=float(spec.get("fit_seconds") or 0.0),
        )


def _level_from(tensors: dict, prefix: str, method: str, n_layers: int, dim: int, where: str) -> LayerStats:
    def get(name: str, shape: tuple[int, ...] | None) -> torch.Tensor:
        value = tensors.get(f"{prefix}.{name}")
        if value is None:
            raise ConfigError(f"{where}: tensor {prefix}.{name} is missing; fit and save it again")
        if shape is not None and tuple(value.shape) != shape:
            raise ConfigError(f"{where}: tensor {prefix}.{name} has shape {list(value.shape)}, expected {list(shape)}")
        return value

    cal_mean, cal_std = get("cal_mean", (n_layers,)), get("cal_std", (n_layers,))
    threshold = float(get("threshold", (1,))[0])
    if method == "mahalanobis":
        mean = get("mean", (n_layers, dim)).to(torch.float64)
        whiten = get("whiten", (n_layers, dim, dim)).to(torch.float32)
        level = LayerStats(mean, whiten, None, cal_mean, cal_std, 0.0)
    else:
        bank = get("bank", None)
        if bank.dim() != 3 or bank.shape[0] != n_layers or bank.shape[2] != dim:
            expected = f"[{n_layers}, B, {dim}]"
            raise ConfigError(f"{where}: tensor {prefix}.bank has shape {list(bank.shape)}, expected {expected}")
        level = LayerStats(None, None, bank, cal_mean, cal_std, 0.0)
    if not (torch.isfinite(cal_std).all() and (cal_std > 0).all() and math.isfinite(threshold)):
        raise ConfigError(f"{where}: the calibration statistics are not finite and positive; fit it again")
    level.threshold = threshold
    return level


def gaussians_from_moments(
    moments: list[Moments], layers: list[int], notes: list[str], what: str
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(means [L, d], whitening [L, d, d], shrinkage per layer) with a note on what shrinkage did."""
    means, whites, shrinkage, jitters = [], [], [], []
    for layer, moment in zip(layers, moments, strict=True):
        cov, amount, mu = ledoit_wolf_from_moments(moment)
        if not mu > 0:
            raise ConfigError(
                f"anomaly detector fit: the normal {what} give identical activations at layer {layer} "
                "(zero variance); give varied normal texts"
            )
        white, jitter = whitening(cov, mu)
        means.append(moment.mean)
        whites.append(white)
        shrinkage.append(amount)
        jitters.append(jitter)
    n, d = moments[0].n, moments[0].dim
    low, high = min(shrinkage), max(shrinkage)
    span = f"{low:.3g}"
    if not math.isclose(low, high, rel_tol=1e-3):
        span = f"{low:.3g}-{high:.3g} (mean {np.mean(shrinkage):.3g})"
    if n < d:
        notes.append(
            f"{what}: n={n} < d={d}: the sample covariance is singular; Ledoit-Wolf shrinkage {span} "
            "made the covariance invertible"
        )
    else:
        notes.append(f"{what}: n={n}, d={d}: Ledoit-Wolf shrinkage {span}")
    if any(jitters):
        notes.append(f"{what}: a diagonal jitter up to {max(jitters):.3g} was added to make the covariance factorise")
    # the whitening matrices are kept (and saved) in float32: half the memory and file size
    # (SmolLM2, 30 layers: 38 MB instead of 76 MB), a float32 batched matmul when scoring, and a
    # relative error ~1e-6 in d^2; means stay float64 because centring is where cancellation bites
    return torch.stack(means), torch.stack(whites).to(torch.float32), shrinkage


def _reservoir(
    bank: list[list[torch.Tensor]] | None, pooled: list[torch.Tensor], seen: int, cap: int, rng: np.random.Generator
) -> tuple[list[list[torch.Tensor]], int]:
    """Algorithm R over the texts (one draw per text, shared by every layer): a uniform sample of <= cap rows."""
    if bank is None:
        bank = [[] for _ in pooled]
    for row in range(pooled[0].shape[0]):
        if seen < cap:
            for rows, feat in zip(bank, pooled, strict=True):
                rows.append(feat[row].to(torch.float32))
        else:
            slot = int(rng.integers(0, seen + 1))
            if slot < cap:
                for rows, feat in zip(bank, pooled, strict=True):
                    rows[slot] = feat[row].to(torch.float32)
        seen += 1
    return bank, seen
