"""Training an SAE on a stream of activations, resumably.

One loop serves the three architectures; only the sparsity term differs:

* relu: MSE + l1_coefficient * sum_i f_i * ||W_dec[i]|| (Anthropic, April 2024 update: the
  decoder-norm weighting makes the penalty invariant to moving scale between f and W_dec,
  so the decoder needs no normalisation); the coefficient warms up linearly;
* topk: MSE + aux_coefficient * AuxK (Gao et al. 2024): the residual x - x_hat is
  reconstructed from the top-k_aux *dead* latents (not fired for `dead_tokens_threshold`
  tokens), which gives dead latents a gradient and revives them;
* jumprelu: MSE + l0_coefficient * L0, the L0 made differentiable in the thresholds by the
  straight-through estimator (Rajamanoharan et al. 2024).

MSE is the squared error summed over d_in and averaged over tokens (SAELens' convention, so
coefficients carry over). topk and jumprelu keep unit-norm decoder rows (renormalised after
each step, with the gradient's radial part removed before it).

The stream is re-cut into `batch_size` rows per step. A checkpoint (`checkpoint_dir`) holds
the SAE, Adam's state tensors by parameter name, the step, the dead-latent counters and the
history, as an interpsuite artifact (safetensors + JSON, no pickle). `train_sae` on a folder
holding a checkpoint resumes from it: it skips the rows the checkpoint already consumed from
the (same, deterministic) stream, so an interrupted and resumed run equals an uninterrupted
one (bit for bit on CPU).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interpsuite.artifacts import load_artifact, save_artifact
from interpsuite.errors import ConfigError

from .model import SAEConfig, SparseAutoencoder, _placeholder_fingerprint, step

__all__ = [
    "TrainHistory",
    "TrainSettings",
    "explained_variance",
    "geometric_median",
    "sae_loss",
    "shuffle_buffer",
    "store_batches",
    "train_sae",
]

CHECKPOINT_KIND = "sae_checkpoint"
CHECKPOINT_NAME = "checkpoint"
B_DEC_INITS = ("geometric_median", "mean", "none")


@dataclass
class TrainSettings:
    """How to train. Defaults follow the papers' recipes for activations normalised to
    E||x|| ~ sqrt(d_in); the length of the run is `steps` or `total_tokens` (one of them)."""

    lr: float = 4e-4
    steps: int | None = None
    total_tokens: int | None = None  # alternative to steps: steps = total_tokens // batch_size
    batch_size: int = 4096  # tokens (rows) per optimiser step
    lr_warmup_steps: int = 0  # linear warm-up from 0
    lr_decay: float = 0.2  # linear decay to 0 over this final fraction of the steps (Anthropic 2024)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0  # max gradient norm (Gao et al.; Anthropic); None: no clipping
    # relu
    l1_coefficient: float = 5.0
    #: linear warm-up of the sparsity coefficient (relu's L1, jumprelu's L0); None: the first
    #: 5% of the steps (Anthropic 2024), so early steps learn to reconstruct before sparsifying
    l1_warmup_steps: int | None = None
    # topk
    aux_k: int | None = None  # None: d_in // 2, capped at width (Gao et al.)
    aux_coefficient: float = 1 / 32
    dead_tokens_threshold: int = 10_000_000  # a latent is dead after this many tokens without firing
    # jumprelu
    l0_coefficient: float = 1.0
    # bookkeeping
    init_b_dec: str = "geometric_median"  # of the first batch; "mean" or "none"
    log_every: int = 1  # history (and its device sync) every N steps
    checkpoint_every: int = 0  # steps; 0: only at the end (when checkpoint_dir is set)
    checkpoint_dir: str | Path | None = None
    progress: bool = False  # a tqdm bar with tokens/s

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.steps is not None and self.total_tokens is not None:
            raise ConfigError("sae training: give steps or total_tokens, not both")
        for name in ("steps", "total_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"sae training: {name} must be >= 1, got {value}")
        if self.batch_size < 1:
            raise ConfigError(f"sae training: batch_size must be >= 1 (tokens per step), got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"sae training: lr must be > 0, got {self.lr}")
        if not 0 <= self.lr_decay <= 1:
            raise ConfigError(f"sae training: lr_decay is a fraction of the steps in [0, 1], got {self.lr_decay}")
        for name in ("lr_warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sae training: {name} must be >= 0, got {getattr(self, name)}")
        if self.l1_warmup_steps is not None and self.l1_warmup_steps < 0:
            raise ConfigError(f"sae training: l1_warmup_steps must be >= 0, got {self.l1_warmup_steps}")
        for name in ("l1_coefficient", "aux_coefficient", "l0_coefficient"):
            if getattr(self, name) < 0:
                raise ConfigError(f"sae training: {name} must be >= 0, got {getattr(self, name)}")
        if self.aux_k is not None and self.aux_k < 1:
            raise ConfigError(f"sae training: aux_k must be >= 1, got {self.aux_k}")
        if self.dead_tokens_threshold < 1:
            raise ConfigError(f"sae training: dead_tokens_threshold must be >= 1, got {self.dead_tokens_threshold}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"sae training: grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.init_b_dec not in B_DEC_INITS:
            raise ConfigError(f"sae training: init_b_dec {self.init_b_dec!r} is unknown; choose one of {B_DEC_INITS}")
        if self.log_every < 1:
            raise ConfigError(f"sae training: log_every must be >= 1, got {self.log_every}")

    @property
    def total_steps(self) -> int | None:
        if self.steps is not None:
            return self.steps
        if self.total_tokens is not None:
            return max(1, self.total_tokens // self.batch_size)
        return None

    def sparsity_warmup(self) -> int:
        if self.l1_warmup_steps is not None:
            return self.l1_warmup_steps
        total = self.total_steps
        return total // 20 if total else 0

    def lr_at(self, step_index: int) -> float:
        """Learning rate for step `step_index` (0-based): warm-up, constant, linear decay."""
        factor = 1.0
        if self.lr_warmup_steps and step_index < self.lr_warmup_steps:
            factor = (step_index + 1) / self.lr_warmup_steps
        total = self.total_steps
        if total and self.lr_decay > 0:
            decay_steps = max(1, int(round(total * self.lr_decay)))
            decay_start = total - decay_steps
            if step_index >= decay_start:
                factor = min(factor, (total - step_index) / decay_steps)
        return self.lr * factor

    def resume_key(self) -> dict[str, Any]:
        """Settings that must match for a checkpoint to be resumed (the rest may change)."""
        return {"batch_size": self.batch_size, "total_steps": self.total_steps}


@dataclass
class TrainHistory:
    """Per logged step: loss, mse (summed over d_in, mean over tokens), l0 (mean active
    latents per token), dead fraction, learning rate, explained variance of the batch."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    dead_fraction: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    explained_variance: list[float] = field(default_factory=list)
    tokens: int = 0
    steps_done: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Any) -> TrainHistory:
        if not isinstance(record, dict) or set(record) != {f.name for f in fields(cls)}:
            raise ConfigError("sae checkpoint: the saved history is incomplete; the checkpoint is corrupt")
        return cls(**record)


# --- helpers --------------------------------------------------------------------------------


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over a batch (1 is perfect)."""
    x, x_hat = x.double(), x_hat.double()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - x_hat).pow(2).sum() / total.clamp_min(1e-30))


def geometric_median(x: Tensor, max_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows of x [n, d] (Weiszfeld).

    b_dec starts here: like the mean a central point, but not pulled by the few very large
    activations (outlier tokens) that dominate a residual stream's mean."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"geometric_median needs a non-empty [n, d] matrix, got shape {tuple(x.shape)}")
    points = x.detach().double()
    median = points.mean(0)
    for _ in range(max_iter):
        distances = (points - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / distances
        new = (weights[:, None] * points).sum(0) / weights.sum()
        moved = float((new - median).norm())
        median = new
        if moved <= tol * (1.0 + float(median.norm())):
            break
    return median.to(x.dtype)


def _rebatch(batches: Iterable[Tensor], batch_size: int, d_in: int, skip_rows: int = 0) -> Iterator[Tensor]:
    """Cut a stream of [n, d_in] chunks into [batch_size, d_in] blocks (the rest at the end
    is dropped: a short last step would weigh its tokens differently). The first `skip_rows`
    rows are skipped (resume)."""
    parts: list[Tensor] = []
    held = 0
    for chunk in batches:
        if not isinstance(chunk, Tensor) or chunk.ndim != 2 or chunk.shape[1] != d_in:
            shape = tuple(chunk.shape) if isinstance(chunk, Tensor) else type(chunk).__name__
            raise ConfigError(f"sae training: batches must be [n, {d_in}] tensors (the SAE's d_in), got {shape}")
        if skip_rows:
            drop = min(skip_rows, chunk.shape[0])
            chunk, skip_rows = chunk[drop:], skip_rows - drop
            if chunk.shape[0] == 0:
                continue
        parts.append(chunk)
        held += chunk.shape[0]
        if held >= batch_size:
            data = torch.cat(parts) if len(parts) > 1 else parts[0]
            full = held // batch_size * batch_size
            yield from data[:full].split(batch_size)
            parts = [data[full:]] if full < held else []
            held -= full


def shuffle_buffer(batches: Iterable[Tensor], buffer_tokens: int, batch_size: int, seed: int = 0) -> Iterator[Tensor]:
    """Mix rows across incoming chunks with bounded memory (at most `buffer_tokens` plus one
    chunk): fill the buffer, shuffle it, emit half of it in `batch_size` blocks, refill.

    Stored activations come text by text, so consecutive rows are strongly correlated; an
    SAE trained on them in order sees one document's features per step. Every row is emitted
    exactly once; the last block may be smaller."""
    if batch_size < 1:
        raise ConfigError(f"shuffle_buffer: batch_size must be >= 1, got {batch_size}")
    if buffer_tokens < 2 * batch_size:
        raise ConfigError(
            f"shuffle_buffer: buffer_tokens ({buffer_tokens}) must be at least 2 x batch_size ({batch_size}); "
            "raise buffer_tokens (more mixing) or lower batch_size"
        )
    generator = torch.Generator().manual_seed(seed)
    parts: list[Tensor] = []
    held = 0
    keep = buffer_tokens // 2
    for chunk in batches:
        if chunk.shape[0] == 0:
            continue
        parts.append(chunk)
        held += chunk.shape[0]
        if held >= buffer_tokens:
            data = torch.cat(parts)
            data = data[torch.randperm(held, generator=generator)]
            emit = (held - keep) // batch_size * batch_size
            yield from data[:emit].split(batch_size)
            parts, held = [data[emit:]], held - emit
    if held:
        data = torch.cat(parts)
        yield from data[torch.randperm(held, generator=generator)].split(batch_size)


def store_batches(
    store: Any,
    hook: str,
    batch_size: int = 4096,
    *,
    buffer_tokens: int = 262_144,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float32,
) -> Iterator[Tensor]:
    """Training batches from an activation store (a folder or an `ActivationStore`): shards in
    a seeded random order, rows shuffled within each shard and mixed across shards by
    `shuffle_buffer`. Deterministic for a seed, so a resumed `train_sae` sees the same stream."""
    from ..activation.store import ActivationStore

    reader = store if isinstance(store, ActivationStore) else ActivationStore(store)
    chunk = min(batch_size, buffer_tokens // 2)
    stream = reader.iter_batches(hook, chunk, shuffle=True, seed=seed, dtype=dtype)
    return shuffle_buffer(stream, buffer_tokens, batch_size, seed=seed + 1)


# --- checkpoints ----------------------------------------------------------------------------


@dataclass
class _State:
    step: int
    tokens_since_fired: Tensor
    history: TrainHistory


def _checkpoint_path(settings: TrainSettings) -> Path | None:
    return Path(settings.checkpoint_dir).expanduser() if settings.checkpoint_dir is not None else None


def _save_checkpoint(
    folder: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, state: _State, settings: TrainSettings
) -> None:
    """Write to `checkpoint.tmp`, then swap it in: a crash leaves one complete checkpoint."""
    names = {id(param): name for name, param in sae.named_parameters()}
    params = optimizer.param_groups[0]["params"]
    tensors = {f"sae/{name}": t for name, t in sae.tensors().items()}
    optim_scalars: dict[str, dict[str, Any]] = {}
    for param in params:
        name = names[id(param)]
        for key, value in optimizer.state.get(param, {}).items():
            if isinstance(value, Tensor):
                tensors[f"optim/{name}/{key}"] = value
            else:
                optim_scalars.setdefault(name, {})[key] = value
    tensors["tokens_since_fired"] = state.tokens_since_fired
    spec = {
        "config": sae.cfg.to_dict(),
        "step": state.step,
        "settings": settings.resume_key(),
        "optim_scalars": optim_scalars,
        "history": state.history.to_dict(),
    }
    tmp, final = folder / f"{CHECKPOINT_NAME}.tmp", folder / CHECKPOINT_NAME
    if not final.exists() and (tmp / "artifact.json").is_file():
        tmp.rename(final)  # the last save stopped between its two renames: keep what it wrote
    if tmp.exists():
        shutil.rmtree(tmp)
    fingerprint = sae.fingerprint or _placeholder_fingerprint(sae.cfg)
    save_artifact(tmp, CHECKPOINT_KIND, tensors, spec, fingerprint)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _load_checkpoint(
    folder: Path, sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> _State | None:
    final, tmp = folder / CHECKPOINT_NAME, folder / f"{CHECKPOINT_NAME}.tmp"
    path = final if final.is_dir() else tmp if (tmp / "artifact.json").is_file() else None
    if path is None:
        return None
    where = f"sae checkpoint {path}"
    artifact = load_artifact(path, CHECKPOINT_KIND, what=where)
    spec = artifact.spec
    saved_cfg = SAEConfig.from_dict(spec.get("config"), where)
    if saved_cfg != sae.cfg:
        differ = {
            name: (value, getattr(sae.cfg, name))
            for name, value in saved_cfg.to_dict().items()
            if value != getattr(sae.cfg, name)
        }
        raise ConfigError(
            f"{where} is for another SAE (saved vs now: {differ}); use another checkpoint_dir or the same config"
        )
    if spec.get("settings") != settings.resume_key():
        raise ConfigError(
            f"{where} was trained with {spec.get('settings')}, now {settings.resume_key()}; "
            "resume with the same batch_size and length, or use another checkpoint_dir"
        )
    tensors = artifact.tensors
    with torch.no_grad():
        for name, param in sae.named_parameters():
            key = f"sae/{name}"
            if key not in tensors or tensors[key].shape != param.shape:
                raise ConfigError(f"{where}: {key} is missing or mis-shaped; the checkpoint is corrupt")
            param.copy_(tensors[key])
    names = {id(param): name for name, param in sae.named_parameters()}
    params = optimizer.param_groups[0]["params"]
    scalars = spec.get("optim_scalars") or {}
    state: dict[int, dict[str, Any]] = {}
    for index, param in enumerate(params):
        name = names[id(param)]
        entry = {key.split("/", 2)[2]: t for key, t in tensors.items() if key.startswith(f"optim/{name}/")}
        entry.update(scalars.get(name, {}))
        if entry:
            state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    counters = tensors.get("tokens_since_fired")
    if counters is None or counters.shape != (sae.cfg.width,):
        raise ConfigError(f"{where}: tokens_since_fired is missing or mis-shaped; the checkpoint is corrupt")
    history = TrainHistory.from_dict(spec.get("history"))
    step_done = spec.get("step")
    if not isinstance(step_done, int) or step_done != history.steps_done:
        raise ConfigError(f"{where}: the step count is inconsistent; the checkpoint is corrupt")
    return _State(step_done, counters.to(sae.W_dec.device), history)


# --- the loop -------------------------------------------------------------------------------


def _aux_k(cfg: SAEConfig, settings: TrainSettings) -> int:
    """k_aux: the settings' value, or d_in / 2 (Gao et al.), never more than the width."""
    return min(settings.aux_k or max(1, cfg.d_in // 2), cfg.width)


def sae_loss(
    sae: SparseAutoencoder,
    x: Tensor,
    settings: TrainSettings,
    sparsity: float,
    dead: Tensor | None = None,
    aux_k: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, mse, acts, x_hat) of one batch [n, d_in]. `sparsity` is the (warmed-up) L1 or L0
    coefficient; `dead` marks the latents AuxK may use (topk; None: none are dead)."""
    cfg = sae.cfg
    if dead is None:
        dead = torch.zeros(cfg.width, dtype=torch.bool, device=sae.W_dec.device)
    if aux_k is None:
        aux_k = _aux_k(cfg, settings)
    pre = sae.pre_acts(x)
    acts = sae.activate(pre)
    x_hat = sae.decode(acts)
    error = x_hat - x
    mse = error.pow(2).sum(-1).mean()
    loss = mse
    if cfg.architecture == "relu" and sparsity > 0:
        loss = loss + sparsity * (acts * sae.decoder_norms()).sum(-1).mean()
    elif cfg.architecture == "jumprelu" and sparsity > 0:
        l0 = step(pre, sae.threshold, cfg.jumprelu_bandwidth).sum(-1).mean()
        loss = loss + sparsity * l0
    elif cfg.architecture == "topk" and settings.aux_coefficient > 0:
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(aux_k, n_dead)
            dead_pre = torch.where(dead, pre, torch.full_like(pre, -math.inf))
            values, indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
            aux_acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            residual = (x - x_hat).detach()
            aux = (aux_acts @ sae.W_dec - residual).pow(2).sum(-1).mean()
            # SAELens / Gao: scale down while only a few latents are dead
            loss = loss + settings.aux_coefficient * min(n_dead / aux_k, 1.0) * aux
    return loss, mse, acts, x_hat


def train_sae(sae: SparseAutoencoder, batches: Iterable[Tensor], settings: TrainSettings | None = None) -> TrainHistory:
    """Train `sae` in place on `batches` ([n, d_in] chunks of any n, re-cut to batch_size rows
    per step) until the settings' length or the end of the stream; return the history.

    With `settings.checkpoint_dir` holding a checkpoint of this SAE config, training resumes
    there: pass the same stream from its start (the consumed rows are skipped)."""
    settings = settings or TrainSettings()
    if not isinstance(sae, SparseAutoencoder):
        raise ConfigError(f"train_sae needs a SparseAutoencoder, got {type(sae).__name__}")
    cfg = sae.cfg
    device = sae.W_dec.device
    total = settings.total_steps
    aux_k = _aux_k(cfg, settings)
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=settings.adam_betas, eps=settings.adam_eps)
    folder = _checkpoint_path(settings)
    state = _load_checkpoint(folder, sae, optimizer, settings) if folder is not None else None
    if state is None:
        state = _State(0, torch.zeros(cfg.width, dtype=torch.int64, device=device), TrainHistory())
    if total is not None and state.step >= total:
        return state.history
    warmup = settings.sparsity_warmup()
    coefficient = settings.l1_coefficient if cfg.architecture == "relu" else settings.l0_coefficient
    normalize = cfg.architecture in ("topk", "jumprelu")
    if normalize and state.step == 0:
        sae.normalize_decoder()
    stream = _rebatch(batches, settings.batch_size, cfg.d_in, skip_rows=state.step * settings.batch_size)
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state.step, desc=f"sae {cfg.architecture}", unit="step")
    started, tokens_at_start = time.perf_counter(), state.history.tokens
    sae.train()
    try:
        while total is None or state.step < total:
            x = next(stream, None)  # pull only what a step needs: an interrupted stream loses nothing
            if x is None:
                break
            x = x.to(device=device, dtype=cfg.torch_dtype)
            if state.step == 0 and settings.init_b_dec != "none":
                with torch.no_grad():
                    centre = geometric_median(x) if settings.init_b_dec == "geometric_median" else x.mean(0)
                    sae.b_dec.copy_(centre)
            lr = settings.lr_at(state.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sparsity = coefficient * min(1.0, (state.step + 1) / warmup) if warmup else coefficient
            dead = state.tokens_since_fired >= settings.dead_tokens_threshold
            loss, mse, acts, x_hat = sae_loss(sae, x, settings, sparsity, dead, aux_k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if normalize:
                sae.remove_parallel_gradient()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), settings.grad_clip)
            optimizer.step()
            if normalize:
                sae.normalize_decoder()
            sae.clamp_threshold()
            with torch.no_grad():
                fired = (acts > 0).any(0)
                state.tokens_since_fired += x.shape[0]
                state.tokens_since_fired[fired] = 0
            state.step += 1
            history = state.history
            history.tokens += x.shape[0]
            history.steps_done = state.step
            log = state.step % settings.log_every == 0 or state.step == total
            if log or bar is not None:
                loss_value, l0_value = float(loss.detach()), float((acts > 0).sum(-1).double().mean())
            if log:
                history.step.append(state.step)
                history.loss.append(loss_value)
                history.mse.append(float(mse.detach()))
                history.l0.append(l0_value)
                history.dead_fraction.append(float(dead.double().mean()))
                history.lr.append(lr)
                history.explained_variance.append(explained_variance(x, x_hat.detach()))
            if bar is not None:
                rate = (history.tokens - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4g}", l0=f"{l0_value:.1f}", tok_s=f"{rate:,.0f}", refresh=False)
            if folder is not None and settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
                _save_checkpoint(folder, sae, optimizer, state, settings)
    finally:
        if bar is not None:
            bar.close()
    sae.eval()
    if state.step == 0:
        raise ConfigError(
            f"sae training: the batches held fewer than batch_size ({settings.batch_size}) rows; "
            "give more activations or a smaller batch_size"
        )
    if folder is not None:
        _save_checkpoint(folder, sae, optimizer, state, settings)
    return state.history


# --- activation scale --------------------------------------------------------------------------
def norm_scaling_factor(x: Tensor) -> float:
    """The factor s with E||s x|| = sqrt(d_in) over the rows of `x` [n, d_in].

    The default coefficients (L1, L0, learning rate) assume activations of that scale, as
    SAELens's `normalize_activations="expected_average_only_in"` does; residual streams of
    real models are often tens of times larger. Train on `s * x`, then `fold_activation_scale`.
    """
    norms = x.double().norm(dim=-1)
    mean = float(norms.mean())
    if not mean > 0:
        raise ConfigError("norm_scaling_factor: the activations are all zero; nothing to scale")
    return math.sqrt(x.shape[-1]) / mean


def fold_activation_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """Make an SAE trained on `scale * x` work on raw `x`, in place, with the same latents.

    encode: (s x - b_dec) W_enc + b_enc = (x - b_dec / s)(s W_enc) + b_enc, and decode divides by
    s: W_dec / s, b_dec / s. Pre-activations (so thresholds and the top-k choice) are unchanged.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"fold_activation_scale: the scale must be a positive number, got {scale}")
    with torch.no_grad():
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
    return sae
