"""L2-regularised logistic regression for many problems at once: every layer x label set x C.

Probing 30 layers with a grid of C values and a control task is hundreds of small fits; one
scikit-learn fit at a time makes probe fitting, not the model, the bottleneck. Here all
problems share one batched L-BFGS loop whose work is a few large matmuls per iteration.

The objective is scikit-learn's (`LogisticRegression(penalty="l2")` in its current, averaged
form), so the solutions are the same optimum:

    mean_i CE(softmax(x_i W + b), y_i) + ||W||^2 / (2 C n)        (the intercept is not penalised)

Binary problems use one logit (class 0 fixed at 0), as scikit-learn does; K > 2 classes use the
multinomial softmax. Each problem has its own L-BFGS history, step size (Armijo backtracking)
and stopping test (max |gradient| <= tol, scikit-learn's lbfgs `gtol`), so one slow problem
does not change the others' iterates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HISTORY = 10
ARMIJO = 1e-4
MAX_HALVINGS = 30


@dataclass
class BatchedFit:
    """Solutions of problems [layers, sets]: W [L, J, d, k], b [L, J, k] (k = 1 when binary)."""

    weights: torch.Tensor
    bias: torch.Tensor
    n_classes: int
    iterations: int
    converged: torch.Tensor  # [L, J] bool
    max_grad: torch.Tensor  # [L, J]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [L, m, d] -> full class logits [L, J, m, K]."""
        z = torch.einsum("lmd,ljdk->ljmk", x, self.weights) + self.bias[:, :, None, :]
        return _full_logits(z, self.n_classes)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(-1)


def _full_logits(z: torch.Tensor, n_classes: int) -> torch.Tensor:
    if n_classes == 2:
        return torch.cat([torch.zeros_like(z), z], dim=-1)
    return z


class _Objective:
    def __init__(self, x: torch.Tensor, labels: torch.Tensor, n_classes: int, c_values: torch.Tensor):
        self.x = x  # [L, n, d]
        self.n_classes = n_classes
        self.k = 1 if n_classes == 2 else n_classes
        self.onehot = torch.nn.functional.one_hot(labels, n_classes).to(x.dtype)  # [J, n, K]
        self.n = x.shape[1]
        self.d = x.shape[2]
        self.reg = (1.0 / (c_values * self.n)).to(x.dtype)  # [J]

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L, J = theta.shape[:2]  # noqa: N806 - shape names
        w = theta[..., : self.d * self.k].reshape(L, J, self.d, self.k)
        return w, theta[..., self.d * self.k :]

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [L, J], gradient [L, J, D]) of every problem, computed analytically."""
        w, b = self.split(theta)
        z = torch.einsum("lnd,ljdk->ljnk", self.x, w) + b[:, :, None, :]
        logp = torch.log_softmax(_full_logits(z, self.n_classes), dim=-1)
        loss = -(self.onehot * logp).sum(-1).mean(-1) + 0.5 * self.reg * (w * w).sum((-2, -1))
        residual = (logp.exp() - self.onehot) / self.n  # [L, J, n, K]
        if self.n_classes == 2:
            residual = residual[..., 1:]
        grad_w = torch.einsum("lnd,ljnk->ljdk", self.x, residual) + self.reg[None, :, None, None] * w
        grad_b = residual.sum(2)
        return loss, torch.cat([grad_w.flatten(2), grad_b], dim=-1)


def _two_loop(grad: torch.Tensor, history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], gamma: torch.Tensor):
    """The L-BFGS direction -H grad per problem; pairs a problem skipped carry rho = 0."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(history):
        alpha = rho * (s * q).sum(-1)
        q -= alpha[..., None] * y
        alphas.append(alpha)
    r = gamma[..., None] * q
    for (s, y, rho), alpha in zip(history, reversed(alphas), strict=True):
        beta = rho * (y * r).sum(-1)
        r += s * (alpha - beta)[..., None]
    return -r


def fit_logistic(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    c_values: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: torch.Tensor | None = None,
) -> BatchedFit:
    """Fit problems (layer l, set j): features x[l] [n, d], labels[j] [n] (codes 0..K-1), C c_values[j].

    Features should be standardised (as the probe engine does); float64 keeps the tolerance
    meaningful.
    """
    objective = _Objective(x, labels, n_classes, c_values)
    L, J = x.shape[0], labels.shape[0]  # noqa: N806 - shape names
    size = objective.d * objective.k + objective.k
    theta = torch.zeros(L, J, size, dtype=x.dtype) if init is None else init.clone()
    loss, grad = objective(theta)
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gamma = torch.ones(L, J, dtype=x.dtype)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported
        active = grad.abs().amax(-1) > tol
        if not bool(active.any()):
            iterations -= 1
            break
        direction = _two_loop(grad, history, gamma) if history else -grad
        slope = (grad * direction).sum(-1)
        uphill = slope >= 0  # a stale curvature pair can point uphill: fall back to steepest descent
        direction = torch.where(uphill[..., None], -grad, direction)
        slope = torch.where(uphill, -(grad * grad).sum(-1), slope)
        direction = direction * active[..., None]
        if not history:  # first step: scaled so its length is at most 1
            direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1.0)
            slope = (grad * direction).sum(-1)
        step = torch.ones(L, J, dtype=x.dtype)
        for _ in range(MAX_HALVINGS):
            candidate = theta + step[..., None] * direction
            new_loss, new_grad = objective(candidate)
            accepted = (new_loss <= loss + ARMIJO * step * slope) | ~active
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        s = candidate - theta
        y = new_grad - grad
        sy = (s * y).sum(-1)
        good = (sy > 1e-12) & active
        rho = torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        history.append((s * good[..., None], y * good[..., None], rho))
        if len(history) > HISTORY:
            history.pop(0)
        gamma = torch.where(good, sy / (y * y).sum(-1).clamp_min(1e-300), gamma)
        theta, loss, grad = candidate, new_loss, new_grad
    max_grad = grad.abs().amax(-1)
    w, b = objective.split(theta)
    return BatchedFit(w, b, n_classes, iterations, max_grad <= tol, max_grad)
