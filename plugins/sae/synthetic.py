"""Synthetic ground truth: data made of a known dictionary, and how well an SAE recovers it.

Real activations have no answer key, so "did training work" needs a case that does: sparse
non-negative combinations of known unit-norm feature directions (the toy setting of Elhage et
al. 2022 and Sharkey et al. 2022). An SAE that trains correctly finds decoder rows aligned with
those directions; `dictionary_recovery` measures that alignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from interpsuite.errors import ConfigError

__all__ = ["RecoveryResult", "SyntheticDictionary", "dictionary_recovery", "synthetic_recovery"]


class SyntheticDictionary:
    """`n_features` random unit-norm directions in `d` dims; samples use `k` of them each.

    A sample is sum_j m_j * features[i_j] over k distinct random features with magnitudes
    m_j ~ uniform(0.5, 1.5) (bounded away from 0, so every active feature is visible above the
    noise), plus isotropic Gaussian noise of standard deviation `noise` per dimension.
    Sampling is seeded: two dictionaries with the same arguments give the same stream."""

    def __init__(self, d: int, n_features: int, k: int, noise: float = 0.0, seed: int = 0):
        if d < 1 or n_features < 1:
            raise ConfigError(f"SyntheticDictionary: d and n_features must be >= 1, got d={d}, n_features={n_features}")
        if not 1 <= k <= n_features:
            raise ConfigError(f"SyntheticDictionary: k must be between 1 and n_features ({n_features}), got {k}")
        if noise < 0:
            raise ConfigError(f"SyntheticDictionary: noise is a standard deviation (>= 0), got {noise}")
        self.d, self.n_features, self.k, self.noise = d, n_features, k, noise
        self.generator = torch.Generator().manual_seed(seed)
        features = torch.randn(n_features, d, generator=self.generator)
        self.features = features / features.norm(dim=1, keepdim=True)

    def __repr__(self) -> str:
        return f"SyntheticDictionary(d={self.d}, n_features={self.n_features}, k={self.k}, noise={self.noise})"

    def sample_codes(self, n: int) -> Tensor:
        """[n, n_features] non-negative codes with exactly k nonzeros per row."""
        if n < 0:
            raise ConfigError(f"SyntheticDictionary.sample: n must be >= 0, got {n}")
        chosen = torch.rand(n, self.n_features, generator=self.generator).topk(self.k, dim=1).indices
        magnitudes = 0.5 + torch.rand(n, self.k, generator=self.generator)
        return torch.zeros(n, self.n_features).scatter(1, chosen, magnitudes)

    def sample(self, n: int, return_codes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """[n, d] samples (and the [n, n_features] codes that made them, if asked)."""
        codes = self.sample_codes(n)
        x = codes @ self.features
        if self.noise > 0:
            x = x + self.noise * torch.randn(n, self.d, generator=self.generator)
        return (x, codes) if return_codes else x

    def batches(self, batch_size: int, n_batches: int) -> Iterator[Tensor]:
        """A finite stream of samples for `train_sae`."""
        for _ in range(n_batches):
            yield self.sample(batch_size)


def dictionary_recovery(W_dec: Tensor, true_dict: Tensor) -> float:  # noqa: N803 (SAELens name)
    """Mean over true features of the best cosine with any decoder row. Signed, not absolute:
    the codes are non-negative, so a row pointing against a feature cannot reconstruct it.
    1.0: every true feature has a decoder row pointing exactly its way; random directions in
    high dimension score near 0."""
    decoder = W_dec.detach().double()
    truth = true_dict.detach().double()
    if decoder.ndim != 2 or truth.ndim != 2 or decoder.shape[1] != truth.shape[1]:
        raise ConfigError(
            f"dictionary_recovery: W_dec {tuple(decoder.shape)} and true_dict {tuple(truth.shape)} must be "
            "[rows, d] matrices with the same d"
        )
    decoder = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    truth = truth / truth.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((truth @ decoder.T).max(dim=1).values.mean())


# The ground-truth recipe every architecture must pass (tests and the `sae_train` check): 64
# dims, 128 true features, 3 active per sample: overcomplete (superposition), with little
# enough interference between features for a linear encoder to reach EV > 0.95.
RECIPE_D, RECIPE_FEATURES, RECIPE_K = 64, 128, 3
#: architecture -> (SAEConfig extras, TrainSettings extras) for the recipe's scale
RECIPE_OPTIONS: dict[str, tuple[dict, dict]] = {
    "topk": ({"k": RECIPE_K}, {}),
    "relu": ({}, {"l1_coefficient": 0.07}),
    # the init threshold sits in the range of the pre-activations, and a wide kernel gives the
    # threshold a gradient from enough tokens for a 1000-step run
    "jumprelu": ({"jumprelu_bandwidth": 0.05, "jumprelu_init_threshold": 0.1}, {"l0_coefficient": 0.02}),
}


@dataclass
class RecoveryResult:
    """How one training run did on the synthetic recipe (held-out samples the run never saw)."""

    architecture: str
    recovery: float
    explained_variance: float
    l0: float
    steps: int
    tokens: int
    seconds: float
    #: training-batch MSE at the first and the last step (training made progress)
    mse_start: float
    mse_end: float


def synthetic_recovery(architecture: str, steps: int = 1000, batch_size: int = 256, seed: int = 0) -> RecoveryResult:
    """Train `architecture` on the recipe's dictionary with our trainer and measure recovery.

    Why: a trainer change that breaks learning (a sign, a normalisation, a schedule) still
    produces an SAE and plausible curves on real activations; only a known answer shows it."""
    import time

    from .model import SAEConfig, SparseAutoencoder
    from .training import TrainSettings, explained_variance, train_sae

    if architecture not in RECIPE_OPTIONS:
        raise ConfigError(f"synthetic_recovery: architecture {architecture!r} is unknown; use {list(RECIPE_OPTIONS)}")
    cfg_extra, settings_extra = RECIPE_OPTIONS[architecture]
    data = SyntheticDictionary(RECIPE_D, RECIPE_FEATURES, RECIPE_K, noise=0.01, seed=seed)
    cfg = SAEConfig(d_in=RECIPE_D, width=2 * RECIPE_FEATURES, architecture=architecture, **cfg_extra)
    sae = SparseAutoencoder(cfg, seed=seed)
    started = time.perf_counter()
    history = train_sae(
        sae,
        data.batches(batch_size, steps),
        TrainSettings(steps=steps, batch_size=batch_size, lr=3e-3, **settings_extra),
    )
    seconds = time.perf_counter() - started
    held_out = data.sample(4096)  # the generator has moved on: unseen samples
    with torch.no_grad():
        ev = explained_variance(held_out, sae(held_out))
        l0 = float((sae.encode(held_out) > 0).sum(-1).float().mean())
    recovery = dictionary_recovery(sae.W_dec, data.features)
    return RecoveryResult(
        architecture, recovery, ev, l0, steps, history.tokens, seconds, history.mse[0], history.mse[-1]
    )
