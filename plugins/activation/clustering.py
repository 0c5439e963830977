"""activation_clustering: k-means over token activations at one layer and hook point.

Token activations are streamed into a uniform reservoir sample of at most `max_tokens` rows
(memory bounded whatever the dataset size; seeded). k-means (scikit-learn, seeded, float64)
with `n_clusters` clipped to the number of distinct token vectors; each cluster is described by
its most frequent tokens and the tokens nearest its centroid. A 2-D projection (UMAP when the
`umap` package is importable and there are enough tokens, PCA otherwise) is drawn coloured by
cluster. Checks: every token is assigned to its nearest centroid, and the inertia recomputed
from the assignment equals scikit-learn's.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .neuron_views import plot_cluster_projection

SUPPORTED_HOOKS = ("resid_pre", "resid_post", "attn.out", "mlp.post", "mlp.out")
PROJECTIONS = ("auto", "pca", "umap")


@dataclass
class ActivationClusteringConfig:
    layer: int = -1
    hook_point: str = "resid_post"
    n_clusters: int = 8
    max_tokens: int = 20000
    #: z-score each dimension before clustering (the residual stream has a few huge dimensions)
    standardize: bool = False
    #: auto: UMAP if installed (and >= 30 tokens), else PCA
    projection: str = "auto"
    top_tokens: int = 8
    #: leave position 0 out (in models without a BOS token its residual is a huge outlier)
    ignore_first_token: bool = False
    seed: int | None = None


class Reservoir:
    """Uniform sample of at most `size` rows from a stream (algorithm R, vectorised per block)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng = size, np.random.default_rng(seed)
        self.rows: np.ndarray | None = None
        self.meta: list[tuple[int, int, str]] = []
        self.seen = 0

    def add(self, x: np.ndarray, meta: list[tuple[int, int, str]]) -> None:
        if self.rows is None:
            self.rows = np.empty((self.size, x.shape[1]), dtype=np.float64)
        for i in range(x.shape[0]):  # rows arrive in blocks of one batch; the loop is over tokens
            if self.seen < self.size:
                self.rows[self.seen] = x[i]
                self.meta.append(meta[i])
            else:
                j = int(self.rng.integers(0, self.seen + 1))
                if j < self.size:
                    self.rows[j] = x[i]
                    self.meta[j] = meta[i]
            self.seen += 1

    def sample(self) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        n = min(self.seen, self.size)
        if self.rows is None:
            return np.empty((0, 0)), []
        return self.rows[:n], self.meta[:n]


def project_2d(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """[n, d] -> [n, 2] (zero-padded when there are fewer than 2 components)."""
    n, d = x.shape
    use_umap = method == "umap" or (method == "auto" and n >= 30)
    if use_umap and importlib.util.find_spec("umap") is not None:
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    from sklearn.decomposition import PCA

    k = min(2, n, d)
    points = np.zeros((n, 2))
    if k >= 1 and n >= 2:
        points[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(x)
    return points, "PC"


class ActivationClustering(Analyzer):
    name = "activation_clustering"
    window_outputs = "stitch"  # sampled tokens at document positions
    family = "activation"
    description = "k-means over token activations at one layer, with top tokens per cluster and a 2-D map"
    Config = ActivationClusteringConfig

    def validate(self, info: ModelInfo, cfg: ActivationClusteringConfig) -> None:
        if cfg.hook_point not in SUPPORTED_HOOKS:
            raise ConfigError(
                f"activation_clustering.hook_point: {cfg.hook_point!r} not supported; "
                f"choose from {list(SUPPORTED_HOOKS)}"
            )
        check_layers(info, [cfg.layer], "activation_clustering.layer")
        if cfg.n_clusters < 1 or cfg.max_tokens < 1 or cfg.top_tokens < 1:
            raise ConfigError("activation_clustering: n_clusters, max_tokens and top_tokens must be >= 1")
        if cfg.projection not in PROJECTIONS:
            raise ConfigError(f"activation_clustering.projection: {cfg.projection!r}; choose from {list(PROJECTIONS)}")

    def estimate(self, info: ModelInfo, cfg: ActivationClusteringConfig, workload):
        """A pass over the inputs into a float64 reservoir, then k-means (n_init=4), the silhouette
        on up to 5000 tokens and a 2-D projection (PCA; UMAP, when installed, costs more)."""
        from interpsuite.estimate_analyzers import KMEANS_ITERATIONS, kmeans_macs, pca_macs, silhouette_macs

        layer = check_layers(info, [cfg.layer], "activation_clustering.layer")[0]
        name = f"blocks.{layer}.{cfg.hook_point}"
        d = workload.width_of(name)
        n, k = min(cfg.max_tokens, workload.tokens), cfg.n_clusters
        cost = workload.forward_inputs(capture=[name]).hold(8 * cfg.max_tokens * d)
        arithmetic = kmeans_macs(n, k, d, n_init=4) + silhouette_macs(min(n, 5000), d) + pca_macs(n, d, 2)
        cost = cost + workload.macs(arithmetic).note(f"k-means: {KMEANS_ITERATIONS} iterations per init assumed")
        return cost + workload.figures(1) + workload.table(n, 7)

    def run(self, ctx: RunContext) -> Result:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        cfg: ActivationClusteringConfig = self.cfg
        layer = check_layers(ctx.model.info, [cfg.layer], "activation_clustering.layer")[0]
        name = f"blocks.{layer}.{cfg.hook_point}"
        seed = ctx.seed if cfg.seed is None else cfg.seed
        reservoir = Reservoir(cfg.max_tokens, seed)
        for batch in ctx.batches("activation_clustering"):
            acts = ctx.model.forward(batch, capture=[name]).cache[name]
            mask = batch.counted_mask.bool()  # each document token sampled at most once
            first = 1 if cfg.ignore_first_token else 0
            if first:
                mask = mask.clone()
                mask[:, 0] = False
            meta = [
                (text_id, pos, batch.tokens[row][pos])
                for row, text_id in enumerate(batch.text_ids)
                for pos in range(first, len(batch.tokens[row]))
            ]
            reservoir.add(acts[mask].double().cpu().numpy(), meta)
        raw, meta = reservoir.sample()
        if len(raw) == 0:
            raise ConfigError("activation_clustering: no tokens to cluster (ignore_first_token with one-token texts?)")
        x = raw
        if cfg.standardize:
            x = (raw - raw.mean(0)) / np.where(raw.std(0) > 0, raw.std(0), 1.0)
        n_distinct = len(np.unique(x, axis=0))
        k = max(1, min(cfg.n_clusters, n_distinct))
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(x)
        labels, centers = kmeans.labels_, kmeans.cluster_centers_
        step = max(1, 2_000_000 // (k * x.shape[1]))  # chunks keep the [rows, k, d] block small
        distances = np.concatenate(
            [((x[i : i + step, None, :] - centers[None]) ** 2).sum(-1) for i in range(0, len(x), step)]
        )
        own = distances[np.arange(len(x)), labels]
        mismatched = float((own > distances.min(axis=1) * (1 + 1e-9) + 1e-12).mean())
        inertia = float(own.sum())
        result = Result()
        result.add_check("tokens_not_at_nearest_centroid_frac", mismatched, 0.0)
        result.add_check("inertia_rel_error", abs(inertia - kmeans.inertia_) / max(abs(kmeans.inertia_), 1e-12), 1e-6)
        tokens = [m[2] for m in meta]
        clusters, names = [], []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            frequent = Counter(tokens[i] for i in members).most_common(cfg.top_tokens)
            nearest = members[np.argsort(own[members], kind="stable")[: cfg.top_tokens]]
            names.append(repr(frequent[0][0]) if frequent else "")
            clusters.append(
                {
                    "cluster": c,
                    "size": len(members),
                    "fraction": len(members) / len(x),
                    "top_tokens": " | ".join(f"{t!r}:{n}" for t, n in frequent),
                    "nearest_tokens": " | ".join(repr(tokens[i]) for i in nearest),
                }
            )
        points, method = project_2d(x, cfg.projection, seed)
        silhouette = None
        if 2 <= k < len(x):
            sample = min(len(x), 5000)
            silhouette = float(silhouette_score(x, labels, sample_size=sample, random_state=seed))
            result.metrics["silhouette"] = silhouette
        result.metrics.update(
            {"n_clusters": float(k), "tokens_clustered": float(len(x)), "tokens_seen": float(reservoir.seen)}
        )
        result.metrics["inertia_per_token"] = inertia / len(x)
        cluster_table = pd.DataFrame(clusters)
        result.tables["clusters"] = cluster_table
        result.tables["assignments"] = pd.DataFrame(
            {
                "text_id": [m[0] for m in meta],
                "position": [m[1] for m in meta],
                "token": tokens,
                "cluster": labels,
                "distance_to_centroid": np.sqrt(own),
                "x": points[:, 0],
                "y": points[:, 1],
            }
        )
        title = f"k-means of blocks.{layer}.{cfg.hook_point} ({ctx.model.info.name}, k={k}, {len(x)} tokens)"
        result.add_figure("projection", plot_cluster_projection, points, labels, names, method, title, ctx.style)
        result.summary = {
            "layer": layer,
            "hook_point": cfg.hook_point,
            "n_clusters": k,
            "projection": method,
            "silhouette": silhouette,
            "clusters": [
                {"cluster": row["cluster"], "size": row["size"], "top_tokens": row["top_tokens"]}
                for row in clusters[:16]
            ],
        }
        return result


ANALYZERS = [ActivationClustering]
