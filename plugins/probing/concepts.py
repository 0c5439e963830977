"""Concept directions: three estimators of "the direction of a concept" in a layer.

* difference of means (mu_pos - mu_neg): the steering literature's workhorse; needs no fitting
  and is what activation addition adds;
* LDA (Fisher's discriminant, Sigma^-1 (mu_pos - mu_neg) with a Ledoit-Wolf shrunk covariance,
  scikit-learn's lsqr solver): the direction that separates the classes best relative to their
  spread; with d close to n the plain covariance is singular, hence the shrinkage;
* the logistic probe's weights (from `probes`): what a trained classifier reads.

They agree when the classes differ by a shift in an isotropic cloud and disagree when the
cloud is anisotropic (LDA and the probe whiten, the mean difference does not): the cosine
between them is a finding, not a check.

Every direction is scaled so that coefficient 1 moves a representation by the class-mean
separation measured along it (v = u * (mu_pos - mu_neg) . u for unit u): the saved files are
then interchangeable in `steering` with `scale: raw`.
"""

from __future__ import annotations

import numpy as np
import torch

from interpsuite.errors import ConfigError

METHODS = ("diff_means", "lda", "probe")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def binary_mask(labels: list[str], positive: str) -> np.ndarray:
    mask = np.asarray([label == positive for label in labels])
    if mask.all() or not mask.any():
        raise ConfigError(f"concept labels need both {positive!r} and other examples; got only one side")
    return mask


def diff_of_means(x, mask: np.ndarray) -> np.ndarray:
    x = _as_numpy(x)
    return x[mask].mean(0) - x[~mask].mean(0)


def lda_direction(x, mask: np.ndarray) -> np.ndarray:
    """Fisher's direction with shrinkage (unit norm, pointing to the positive class)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = _as_numpy(x)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, mask.astype(int))
    return _unit(lda.coef_[0])


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def scaled_to_separation(direction: np.ndarray, separation: np.ndarray) -> np.ndarray:
    """u * ((mu_pos - mu_neg) . u): coefficient 1 = the class-mean gap along u (sign kept positive)."""
    unit = _unit(direction)
    along = float(separation @ unit)
    if along < 0:  # a direction points to the positive class by convention
        unit, along = -unit, -along
    return unit * along


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def projection_gap(x, mask: np.ndarray, direction: np.ndarray) -> float:
    """Mean projection of the positive class minus the negative's, in units of the pooled std."""
    x = _as_numpy(x)
    unit = _unit(direction)
    proj = x @ unit
    spread = float(np.sqrt((proj[mask].var(ddof=1) + proj[~mask].var(ddof=1)) / 2)) or 1.0
    return float(proj[mask].mean() - proj[~mask].mean()) / spread
