"""tuned_lens: one learned affine translator per layer in front of the logit lens.

The logit lens reads early layers badly: their residual stream is not yet in the basis the
unembedding expects. The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens") learns, for every layer L, an affine translator
parametrised as `h + W_L h + b_L` (identity at W = 0, b = 0) so that
`unembed(translator_L(resid_post_L))` matches the model's final distribution, by minimising
KL(final || lens) over training tokens. The last layer's translator stays the identity (its
lens is the model itself). Translators cover `embed` (layer -1) and every block.

Training (this module, CPU-friendly defaults):

1. Residual streams of the training texts are cached once (`embed` and every
   `blocks.{L}.resid_post` at real tokens, at most `max_train_tokens`), without gradients
   through the model; everything after works from the cache.
2. `init: least_squares` (default) starts every translator from the ridge least-squares map
   from the layer's residual (normalised per token) to the final residual (normalised per
   token). Because the final norm is scale-invariant this is a cheap closed-form estimate of
   the translator; `init: identity` is the paper's start (W = 0, b = 0).
3. `steps` Adam steps (learning rate decaying linearly to 0, as in the paper) on the KL
   objective, all translators at once, on random minibatches of `batch_tokens` cached tokens;
   each translator keeps its parameters from the monitored point where its own objective was
   lowest. The paper trains on a GPU over the full vocabulary; on a CPU
   the unembedding of 49k tokens per step and layer is the whole cost, so by default the KL is
   taken over the `vocab_top` tokens with the most final-probability mass on the training set,
   plus one bucket for the rest of the vocabulary whose final probability is exact and whose
   lens probability is estimated each step from `vocab_sample` uniformly drawn remaining
   tokens. `vocab_top: null` (or a vocabulary no larger than vocab_top + vocab_sample) uses the
   exact full-vocabulary KL.

Evaluation is always exact (full vocabulary): mean KL(final || lens) per layer over the real
tokens of held-out texts, for the logit lens and the tuned lens. The held-out texts are the
run's inputs; training lines equal to one of them are dropped, and if that would drop more
than half of the training lines (the run data is the training corpus) the corpus is split
instead (`heldout_fraction` of its lines, seeded). The summary says which.

The lens is saved to the run's data folder as `tuned_lens.safetensors` (tensors) plus
`tuned_lens.json` (model, shapes, training settings), reloaded with `TunedLens.load` (never
pickle), and the reloaded lens must reproduce the trained one exactly.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

from .lens import EMBED, kl_to_final, layer_hook, layer_label
from .lens_plots import plot_lens_comparison

CORPUS_PATH = Path(__file__).parent / "data" / "lens_corpus.txt"
WEIGHTS_FILE = "tuned_lens.safetensors"
META_FILE = "tuned_lens.json"
FORMAT_VERSION = 1
INITS = ("least_squares", "identity")
#: default Adam learning rate per init: small steps refine the closed-form start; larger ones
#: are needed from the identity
DEFAULT_LR = {"least_squares": 1e-5, "identity": 1e-3}
#: tokens of the fixed minibatch on which the training objective is reported
MONITOR_TOKENS = 128
#: points of the training curve (the objective is evaluated every steps // MONITOR_POINTS steps)
MONITOR_POINTS = 10
LAST_LAYER_KL_TOLERANCE = 1e-5
#: positions of the first held-out text at which the reloaded lens must reproduce every layer's logits
ROUNDTRIP_POSITIONS = 8


# --- the lens -------------------------------------------------------------------------------
@dataclass
class TunedLens:
    """Affine translators `h + W[i] h + b[i]`, i = 0 for `embed`, i = L + 1 for block L.

    `weight` is [n_layers + 1, d_model, d_model], `bias` [n_layers + 1, d_model] (float32). The
    last translator (block n_layers - 1) is the identity and is never trained."""

    model_name: str
    d_model: int
    n_layers: int
    vocab_size: int
    weight: torch.Tensor
    bias: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, info: ModelInfo, device: str | torch.device = "cpu") -> TunedLens:
        n, d = info.n_layers + 1, info.d_model
        return cls(
            info.name,
            d,
            info.n_layers,
            info.vocab_size,
            torch.zeros(n, d, d, device=device),
            torch.zeros(n, d, device=device),
        )

    @staticmethod
    def index(layer: int) -> int:
        """Translator index of a lens layer (EMBED = -1 -> 0, block L -> L + 1)."""
        return layer + 1

    def translate(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        i = self.index(layer)
        w, b = self.weight[i].to(resid), self.bias[i].to(resid)
        return resid + resid @ w.T + b

    def logits(self, model: HookedModel, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The tuned-lens logits of a residual stream captured at `layer`."""
        return model.unembed(self.translate(layer, resid))

    def describe(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "vocab_size": self.vocab_size,
            "translators": ["embed"] + [f"blocks.{L}.resid_post" for L in range(self.n_layers)],
            "parametrisation": "resid + weight[i] @ resid + bias[i] (weight = A - I)",
            "training": self.meta,
        }

    def save(self, directory: str | Path) -> Path:
        """Write `tuned_lens.safetensors` and `tuned_lens.json` into `directory`; returns the folder."""
        from safetensors.torch import save_file

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight.detach().float().cpu().contiguous(), "bias": self.bias.detach().float().cpu()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"model_name": self.model_name})
        (folder / META_FILE).write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path, info: ModelInfo | None = None, device: str | torch.device = "cpu") -> TunedLens:
        """Load a saved lens (its folder, or either of its two files); with `info`, refuse a lens
        trained for a different model. Only safetensors and JSON are read."""
        from safetensors.torch import load_file

        weights, meta_path = lens_files(path)
        meta = read_meta(meta_path)
        if info is not None:
            check_compatible(meta, info, str(path))
        tensors = load_file(str(weights), device=str(device))
        n, d = meta["n_layers"] + 1, meta["d_model"]
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or tuple(weight.shape) != (n, d, d) or tuple(bias.shape) != (n, d):
            raise ConfigError(
                f"tuned lens {weights}: tensors do not match its metadata (expected weight [{n}, {d}, {d}] and "
                f"bias [{n}, {d}]); the files are damaged or from different saves: train the lens again"
            )
        return cls(meta["model_name"], d, meta["n_layers"], meta["vocab_size"], weight, bias, meta.get("training", {}))


def lens_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths of a saved lens given its folder or one of its files."""
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    weights, meta = folder / WEIGHTS_FILE, folder / META_FILE
    if p.is_file() and p.suffix == ".safetensors":
        weights, meta = p, p.with_suffix(".json")
    for f in (weights, meta):
        if not f.is_file():
            raise ConfigError(
                f"tuned lens {path}: {f} not found; give the folder written by tuned_lens (it holds "
                f"{WEIGHTS_FILE} and {META_FILE}) or null to train a new lens"
            )
    return weights, meta


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"tuned lens metadata {path} is not readable JSON ({err}); train the lens again") from None
    missing = [k for k in ("model_name", "d_model", "n_layers", "vocab_size") if k not in meta]
    if missing:
        raise ConfigError(f"tuned lens metadata {path} lacks {missing}; it was not written by tuned_lens")
    return meta


def check_compatible(meta: dict[str, Any], info: ModelInfo, where: str) -> None:
    """A lens is only valid for the model it was trained on: same name and shapes."""
    ours = {"model_name": info.name, "d_model": info.d_model, "n_layers": info.n_layers, "vocab_size": info.vocab_size}
    diff = {k: (meta.get(k), v) for k, v in ours.items() if meta.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: lens {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"tuned lens {where} was trained for model {meta.get('model_name')!r}, not {info.name!r} ({detail}); "
            f"train a lens for this model (load_path: null) or run with the model it was trained for"
        )


# --- data -------------------------------------------------------------------------------------
def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a .txt file (one text per line)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Split:
    train: list[str]
    heldout: list[str]
    source: str
    dropped: int


def split_texts(corpus: Sequence[str], inputs: Sequence[str], fraction: float, seed: int, source: str) -> Split:
    """Training lines and held-out texts that never overlap (see the module docstring).

    `dropped` counts training lines removed because they are run inputs (0 when split)."""
    held = {t.strip() for t in inputs}
    kept = [line for line in corpus if line.strip() not in held]
    dropped = len(corpus) - len(kept)
    if len(kept) * 2 >= len(corpus) and kept:
        return Split(kept, list(inputs), f"run inputs ({len(inputs)} texts)", dropped)
    lines = list(dict.fromkeys(corpus))
    if len(lines) < 2:
        raise ConfigError(
            f"tuned_lens: the run data is the training text ({source}), which has {len(lines)} distinct line(s): "
            f"too few to split into training and held-out lines; give more lines or other run data"
        )
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    n_held = min(len(lines) - 1, max(1, round(fraction * len(lines))))
    heldout = [lines[i] for i in sorted(order[:n_held])]
    train = [lines[i] for i in sorted(order[n_held:])]
    return Split(train, heldout, f"{source} split: {n_held} of {len(lines)} lines held out", 0)


def collect_residuals(
    model: HookedModel, texts: Sequence[str], max_tokens: int, batch_size: int, max_length: int, progress=None
) -> torch.Tensor:
    """Residual streams at every lens layer for the real tokens of `texts`: [n_layers + 1, N, d].

    Stops once `max_tokens` tokens are collected (texts in order)."""
    layers = [EMBED, *range(model.info.n_layers)]
    names = [layer_hook(L) for L in layers]
    chunks, total = [], 0
    n_batches = (len(texts) + batch_size - 1) // batch_size
    batches = model.batches(texts, batch_size, max_length)
    with torch.no_grad():
        for batch in progress(batches, "tuned_lens cache", n_batches) if progress else batches:
            cache = model.forward(batch, capture=names, logits_to_keep=1).cache
            mask = batch.attention_mask.bool()
            chunks.append(torch.stack([cache[n][mask].float() for n in names]))
            total += int(mask.sum())
            if total >= max_tokens:
                break
    return torch.cat(chunks, 1)[:, :max_tokens]


# --- training ---------------------------------------------------------------------------------
def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def least_squares_init(lens: TunedLens, acts: torch.Tensor, ridge: float) -> None:
    """Closed-form start: per layer, ridge regression of the per-token-normalised final residual
    on the per-token-normalised layer residual (with intercept), in float64.

    The regression gives y ~ A x/s + c (s = the token's RMS). The translator must be affine in
    x, so s is replaced by its mean over the training tokens: W = A / mean(s) - I, b = c. The final
    norm is scale-invariant, so this is exact for tokens whose RMS is the mean and close
    otherwise; the KL steps then correct it on the real objective."""
    n_train, d = acts.shape[0] - 1, acts.shape[2]
    target = rms_normalise(acts[-1].double())
    eye = torch.eye(d + 1, dtype=torch.float64, device=acts.device)
    for i in range(n_train):
        x = acts[i].double()
        scale = x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        xa = torch.cat([x / scale, torch.ones_like(scale)], 1)
        gram = xa.T @ xa + ridge * len(xa) * eye
        solution = torch.linalg.solve(gram, xa.T @ target)  # [d + 1, d]
        a, c = solution[:d].T, solution[d]
        lens.weight[i] = (a / scale.mean() - torch.eye(d, dtype=torch.float64, device=acts.device)).float()
        lens.bias[i] = c.float()


@dataclass
class Objective:
    """KL(final || lens) per translator on cached tokens, exact or over a vocabulary subset."""

    final_norm: Callable[[torch.Tensor], torch.Tensor]
    unembed_weight: torch.Tensor
    unembed_bias: torch.Tensor | None
    final_logp_top: torch.Tensor  # [N, K] final log-probabilities of the kept vocabulary (full: all)
    p_rest: torch.Tensor | None  # [N] final probability of everything else (None: exact KL)
    top_ids: torch.Tensor | None  # [K] (None: full vocabulary)
    rest_ids: torch.Tensor | None
    vocab_sample: int
    mass_covered: float

    def unembed(self, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        w = self.unembed_weight if ids is None else self.unembed_weight[ids]
        b = None if self.unembed_bias is None else (self.unembed_bias if ids is None else self.unembed_bias[ids])
        return F.linear(self.final_norm(x), w, b)

    def __call__(self, h: torch.Tensor, idx: torch.Tensor, weight, bias, generator=None) -> torch.Tensor:
        """Mean KL per translator: h [n, T, d] (cached residuals of tokens idx), -> [n]."""
        x = h + torch.bmm(h, weight.transpose(1, 2)) + bias[:, None, :]
        z = self.unembed(x, self.top_ids)
        target = self.final_logp_top[idx]
        if self.top_ids is None:
            return kl_to_final(target, torch.log_softmax(z, -1)).mean(-1)
        sample = self.rest_ids[
            torch.randint(0, len(self.rest_ids), (self.vocab_sample,), generator=generator).to(self.rest_ids.device)
        ]
        lse_rest = torch.logsumexp(self.unembed(x, sample), -1) + math.log(len(self.rest_ids) / self.vocab_sample)
        lse = torch.logaddexp(torch.logsumexp(z, -1), lse_rest)
        p_rest = self.p_rest[idx]
        kl_top = (target.exp() * (target - (z - lse[..., None]))).sum(-1)
        kl_rest = p_rest * (p_rest.clamp_min(1e-30).log() - (lse_rest - lse))
        return (kl_top + kl_rest).mean(-1)


def build_objective(model: HookedModel, acts: torch.Tensor, vocab_top: int | None, vocab_sample: int) -> Objective:
    """Final distributions of the cached tokens; the kept vocabulary = most final mass."""
    final = model.adapter.final_module()
    if final is None:
        final = torch.nn.Identity()
    unembed = model.adapter.unembed_module()
    weight = unembed.weight.detach()
    bias = None if getattr(unembed, "bias", None) is None else unembed.bias.detach()
    vocab = weight.shape[0]
    resid = acts[-1]
    exact = vocab_top is None or vocab_top + vocab_sample >= vocab
    with torch.no_grad():
        lse, mass = [], torch.zeros(vocab, dtype=torch.float64, device=acts.device)
        for start in range(0, resid.shape[0], 512):
            logits = F.linear(final(resid[start : start + 512]), weight, bias).float()
            lse.append(torch.logsumexp(logits, -1))
            mass += torch.softmax(logits, -1).sum(0).double()
        lse = torch.cat(lse)
        if exact:
            final_logp = torch.cat(
                [
                    torch.log_softmax(F.linear(final(resid[s : s + 512]), weight, bias).float(), -1)
                    for s in range(0, resid.shape[0], 512)
                ]
            )
            return Objective(final, weight, bias, final_logp, None, None, None, 0, 1.0)
        top_ids = mass.topk(vocab_top).indices
        top_logp = F.linear(final(resid), weight[top_ids], None if bias is None else bias[top_ids]) - lse[:, None]
        p_rest = (1 - top_logp.exp().sum(-1)).clamp_min(0.0)
        rest = torch.ones(vocab, dtype=torch.bool, device=acts.device)
        rest[top_ids] = False
        covered = float(mass[top_ids].sum() / mass.sum())
        return Objective(
            final, weight, bias, top_logp, p_rest, top_ids, rest.nonzero().squeeze(1), vocab_sample, covered
        )


def monitored_objective(objective: Objective, acts, monitor: torch.Tensor, weight, bias, seed: int) -> torch.Tensor:
    """Objective per trainable translator on the fixed tokens `monitor`, with a fixed vocabulary
    sample (so that values along the training curve compare): [n_layers]."""
    n_train = acts.shape[0] - 1
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        return objective(acts[:n_train, monitor], monitor, weight, bias, generator)


def train_translators(
    lens: TunedLens,
    acts: torch.Tensor,
    objective: Objective,
    monitor: torch.Tensor,
    steps: int,
    lr: float,
    batch_tokens: int,
    seed: int,
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> tuple[list[dict[str, float]], float]:
    """Adam with a linearly decaying learning rate (as in the paper) on the KL objective, all
    trainable translators at once (the last one stays the identity).

    The objective is measured on the tokens `monitor` at MONITOR_POINTS steps; each translator
    keeps its parameters from the point where its own objective was lowest (so a step size too
    large for some layer cannot leave it worse than it started). Returns the training curve
    (mean over translators of the monitored objective) and the mean objective of the kept
    parameters."""
    n_train, n_tokens = acts.shape[0] - 1, acts.shape[1]
    generator = torch.Generator().manual_seed(seed)
    weight = lens.weight[:n_train].clone().requires_grad_(True)
    bias = lens.bias[:n_train].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([weight, bias], lr=lr)  # not fused: CPU fused Adam trains far worse here
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / max(steps, 1))
    every = max(1, steps // MONITOR_POINTS)
    best = monitored_objective(objective, acts, monitor, weight, bias, seed)
    best_weight, best_bias = weight.detach().clone(), bias.detach().clone()
    curve = [{"step": 0, "objective": float(best.mean())}]
    steps_iter = range(1, steps + 1)
    with torch.enable_grad():
        for step in progress(steps_iter, "tuned_lens training", steps) if progress else steps_iter:
            idx = torch.randint(0, n_tokens, (batch_tokens,), generator=generator).to(acts.device)
            loss = objective(acts[:n_train, idx], idx, weight, bias, generator).sum()
            weight.grad, bias.grad = torch.autograd.grad(loss, [weight, bias])
            optimiser.step()
            schedule.step()
            if step % every == 0 or step == steps:
                value = monitored_objective(objective, acts, monitor, weight, bias, seed)
                improved = value < best
                best = torch.where(improved, value, best)
                best_weight[improved] = weight.detach()[improved]
                best_bias[improved] = bias.detach()[improved]
                curve.append({"step": step, "objective": float(value.mean())})
    lens.weight[:n_train] = best_weight
    lens.bias[:n_train] = best_bias
    return curve, float(best.mean())


# --- evaluation -------------------------------------------------------------------------------
def heldout_kl(
    model: HookedModel,
    lens: TunedLens,
    texts: Sequence[str],
    batch_size: int,
    max_length: int | None,
    progress=None,
    reloaded: TunedLens | None = None,
) -> tuple[pd.DataFrame, int, float]:
    """Exact mean KL(final || lens) per layer over the real tokens of `texts`, both lenses.

    With `reloaded` (the saved and reloaded lens) also the largest difference between the two
    lenses: their parameters, and their logits at every layer for the first text's last
    ROUNDTRIP_POSITIONS real tokens (from the same forward pass; 0.0 without `reloaded`)."""
    layers = [EMBED, *range(model.info.n_layers)]
    names = [layer_hook(L) for L in layers]
    sums = np.zeros((len(layers), 2))
    tokens, diff = 0, 0.0
    if reloaded is not None:
        diff = max(
            float((lens.weight - reloaded.weight.to(lens.weight)).abs().max()),
            float((lens.bias - reloaded.bias.to(lens.bias)).abs().max()),
        )
    n_batches = (len(texts) + batch_size - 1) // batch_size
    batches = model.batches(texts, batch_size, max_length)
    with torch.no_grad():
        for number, batch in enumerate(progress(batches, "tuned_lens held-out", n_batches) if progress else batches):
            out = model.forward(batch, capture=names)
            mask = batch.attention_mask.bool()
            final_logp = torch.log_softmax(out.output.float(), -1)
            first = int(batch.lengths[0])
            for j, (layer, name) in enumerate(zip(layers, names, strict=True)):
                resid = out.cache[name]
                plain = torch.log_softmax(model.unembed(resid).float(), -1)
                sums[j, 0] += float(kl_to_final(final_logp, plain)[mask].sum())
                del plain
                tuned_logits = lens.logits(model, layer, resid)
                sums[j, 1] += float(kl_to_final(final_logp, torch.log_softmax(tuned_logits.float(), -1))[mask].sum())
                if reloaded is not None and number == 0:
                    window = slice(max(0, first - ROUNDTRIP_POSITIONS), first)
                    # both lenses on the same slice: the same shapes give the same kernels, so a
                    # faithful round trip is exactly 0 (a slice of the batch's logits need not be:
                    # a GEMM may block a [1, w] input differently from the whole batch)
                    here = resid[:1, window]
                    again = reloaded.logits(model, layer, here)
                    diff = max(diff, float((again - lens.logits(model, layer, here)).abs().max()))
                del tuned_logits
            tokens += int(mask.sum())
    means = sums / max(tokens, 1)
    table = pd.DataFrame(
        {
            "layer": layers,
            "hook": names,
            "logit_lens_kl": means[:, 0],
            "tuned_lens_kl": means[:, 1],
        }
    )
    table["improvement"] = table["logit_lens_kl"] - table["tuned_lens_kl"]
    return table, tokens, diff


# --- the analyzer -----------------------------------------------------------------------------
@dataclass
class TunedLensConfig:
    train_path: str | None = None
    load_path: str | None = None
    max_train_tokens: int = 2048
    train_max_length: int = 128
    init: str = "least_squares"
    ridge: float = 1e-2
    steps: int = 30
    lr: float | None = None
    batch_tokens: int = 64
    vocab_top: int | None = 1024
    vocab_sample: int = 512
    heldout_fraction: float = 0.2
    max_eval_texts: int = 64
    seed: int | None = None


def describe_objective(objective: Objective, cfg: TunedLensConfig) -> str:
    if objective.top_ids is None:
        return "exact KL(final || lens) over the full vocabulary"
    return f"KL(final || lens) over the top {cfg.vocab_top} tokens + a rest bucket ({cfg.vocab_sample} sampled)"


class TunedLensAnalyzer(Analyzer):
    name = "tuned_lens"
    family = "mechanistic"
    description = "Affine translator per layer trained to match the final distribution; held-out KL vs the logit lens"
    Config = TunedLensConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: TunedLensConfig) -> None:
        if cfg.train_path is not None:
            path = Path(cfg.train_path).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"{self.name}: train_path {cfg.train_path!r} is not a file; give a .txt file with one text per "
                    f"line, or null for the shipped corpus"
                )
            if not read_lines(path):
                raise ConfigError(f"{self.name}: train_path {cfg.train_path!r} has no non-empty lines")
        if cfg.load_path is not None:
            _, meta_path = lens_files(cfg.load_path)
            check_compatible(read_meta(meta_path), info, cfg.load_path)
        if cfg.init not in INITS:
            raise ConfigError(f"{self.name}: init {cfg.init!r} is not one of {list(INITS)}")
        problems = []
        if cfg.max_train_tokens < 1:
            problems.append(f"max_train_tokens ({cfg.max_train_tokens}) must be >= 1")
        if cfg.train_max_length < 2:
            problems.append(f"train_max_length ({cfg.train_max_length}) must be >= 2")
        if cfg.steps < 0:
            problems.append(f"steps ({cfg.steps}) must be >= 0")
        if cfg.lr is not None and not cfg.lr > 0:
            problems.append(f"lr ({cfg.lr}) must be > 0 (or null for the default of the init)")
        if cfg.batch_tokens < 1:
            problems.append(f"batch_tokens ({cfg.batch_tokens}) must be >= 1")
        if cfg.vocab_top is not None and cfg.vocab_top < 1:
            problems.append(f"vocab_top ({cfg.vocab_top}) must be >= 1 or null for the full vocabulary")
        if cfg.vocab_sample < 1:
            problems.append(f"vocab_sample ({cfg.vocab_sample}) must be >= 1")
        if cfg.ridge < 0:
            problems.append(f"ridge ({cfg.ridge}) must be >= 0")
        if not 0 < cfg.heldout_fraction < 1:
            problems.append(f"heldout_fraction ({cfg.heldout_fraction}) must be in (0, 1)")
        if cfg.max_eval_texts < 1:
            problems.append(f"max_eval_texts ({cfg.max_eval_texts}) must be >= 1")
        if problems:
            raise ConfigError(f"{self.name}: " + "; ".join(problems) + "; see conf/analyzer/tuned_lens.yaml")

    def estimate(self, info: ModelInfo, cfg: TunedLensConfig, workload):
        """Residual streams of the training lines until max_train_tokens, the translators' training
        (least squares, then Adam steps on the KL), and the held-out evaluation: both lenses at
        every layer over every held-out token (two vocabulary-wide unembeddings per layer)."""
        from interpsuite.estimate_analyzers import lens_unembed_macs, tuned_lens_training_macs

        n_lenses, d = info.n_layers + 1, info.d_model
        names = [layer_hook(L) for L in [EMBED, *range(info.n_layers)]]
        seed = workload.seed if cfg.seed is None else cfg.seed
        cost = workload.figures(1, 2)
        if cfg.load_path is not None:
            heldout = list(workload.texts)
        else:
            corpus = read_lines(cfg.train_path or CORPUS_PATH)
            split = split_texts(corpus, workload.texts, cfg.heldout_fraction, seed, "corpus")
            max_length = min(cfg.train_max_length, info.max_positions or cfg.train_max_length)
            lengths, used = [], 0
            for batch in workload.batches(workload.token_lengths(split.train, max_length)):
                lengths += batch
                used += sum(batch)
                if used >= cfg.max_train_tokens:
                    break
            n = min(used, cfg.max_train_tokens)
            cost = cost + workload.forward_batches(lengths, logits=1, capture=names).hold(4 * n_lenses * n * d)
            kept = info.vocab_size if cfg.vocab_top is None else min(info.vocab_size, cfg.vocab_top + cfg.vocab_sample)
            training = tuned_lens_training_macs(
                n, n_lenses - 1, d, info.vocab_size, kept, cfg.steps, cfg.batch_tokens, MONITOR_TOKENS, MONITOR_POINTS
            )
            cost = cost + workload.macs(training)
            heldout = split.heldout
        lengths = workload.token_lengths(heldout[: cfg.max_eval_texts])
        cost = cost + workload.forward_batches(lengths, capture=names)
        padded = sum(max(b) * len(b) for b in workload.batches(lengths))
        both = 2 * lens_unembed_macs(padded, n_lenses, d, info.vocab_size) + padded * n_lenses * d * d
        cost = cost + workload.macs(both)
        return cost + workload.disk(4 * n_lenses * (d * d + d))

    def run(self, ctx: RunContext) -> Result:
        cfg: TunedLensConfig = self.cfg
        model = ctx.model
        info = model.info
        seed = ctx.seed if cfg.seed is None else cfg.seed
        progress = ctx.progress if ctx.show_progress else None
        result = Result()
        curve: list[dict[str, float]] = []
        if cfg.load_path is not None:
            lens = TunedLens.load(cfg.load_path, info, device=model.device)
            split = Split([], list(ctx.inputs.texts), f"run inputs ({len(ctx.inputs.texts)} texts)", 0)
            origin = f"loaded from {cfg.load_path}"
        else:
            corpus_source = cfg.train_path or "shipped corpus (plugins/mechanistic/data/lens_corpus.txt)"
            corpus = read_lines(cfg.train_path or CORPUS_PATH)
            split = split_texts(corpus, ctx.inputs.texts, cfg.heldout_fraction, seed, corpus_source)
            lens, curve, details = self._train(ctx, cfg, split, seed, progress)
            origin = f"trained on {corpus_source}"
            result.metrics.update(details)
        heldout = split.heldout[: cfg.max_eval_texts]
        overlap = len({t.strip() for t in heldout} & {t.strip() for t in split.train})
        folder = lens.save(ctx.data_dir(self.name))
        reloaded = TunedLens.load(folder, info, device=model.device)
        table, n_eval, roundtrip = heldout_kl(
            model, lens, heldout, ctx.batch_size, ctx.max_length, progress, reloaded=reloaded
        )
        self._report(result, table, curve, info, cfg, split, heldout, n_eval, overlap, roundtrip, folder, origin)
        result.add_figure("heldout_kl", plot_lens_comparison, table, pd.DataFrame(curve), info.name, ctx.style)
        return result

    def _train(self, ctx, cfg: TunedLensConfig, split: Split, seed: int, progress):
        model = ctx.model
        torch.manual_seed(seed)
        max_length = min(cfg.train_max_length, model.info.max_positions or cfg.train_max_length)
        acts = collect_residuals(model, split.train, cfg.max_train_tokens, ctx.batch_size, max_length, progress)
        lens = TunedLens.identity(model.info, device=model.device)
        if cfg.init == "least_squares":
            least_squares_init(lens, acts, cfg.ridge)
        objective = build_objective(model, acts, cfg.vocab_top, cfg.vocab_sample)
        lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.init]
        monitor = torch.randperm(acts.shape[1], generator=torch.Generator().manual_seed(seed))[:MONITOR_TOKENS]
        monitor = monitor.to(acts.device)
        zeros = torch.zeros_like(lens.weight[:-1]), torch.zeros_like(lens.bias[:-1])
        identity_objective = float(monitored_objective(objective, acts, monitor, *zeros, seed).mean())
        curve, kept = train_translators(lens, acts, objective, monitor, cfg.steps, lr, cfg.batch_tokens, seed, progress)
        lens.meta = {
            "corpus": cfg.train_path or "lens_corpus.txt (shipped)",
            "train_lines": len(split.train),
            "train_tokens": int(acts.shape[1]),
            "train_max_length": max_length,
            "init": cfg.init,
            "ridge": cfg.ridge,
            "steps": cfg.steps,
            "optimizer": "adam",
            "lr": lr,
            "batch_tokens": cfg.batch_tokens,
            "objective": describe_objective(objective, cfg),
            "seed": seed,
        }
        details = {
            "train.tokens": float(acts.shape[1]),
            "train.lines": float(len(split.train)),
            "train.vocab_mass_covered": objective.mass_covered,
            "train.objective_logit_lens": identity_objective,
            "train.objective_init": curve[0]["objective"],
            "train.objective_last_step": curve[-1]["objective"],
            "train.objective_final": kept,
        }
        return lens, curve, details

    def _report(self, result, table, curve, info, cfg, split, heldout, n_eval, overlap, roundtrip, folder, origin):
        result.tables["heldout_kl"] = table
        if curve:
            result.tables["training"] = pd.DataFrame(curve)
        early = table[(table["layer"] >= 0) & (table["layer"] < info.n_layers / 2)]
        if early.empty:  # a 1-layer model: its only block is the last
            early = table[table["layer"] >= 0]
        logit_mean, tuned_mean = float(early["logit_lens_kl"].mean()), float(early["tuned_lens_kl"].mean())
        better = float((early["tuned_lens_kl"] < early["logit_lens_kl"]).mean())
        for row in table.itertuples():
            key = layer_label(int(row.layer))
            result.metrics[f"heldout_kl.logit.{key}"] = float(row.logit_lens_kl)
            result.metrics[f"heldout_kl.tuned.{key}"] = float(row.tuned_lens_kl)
        result.metrics["early_half.logit_kl_mean"] = logit_mean
        result.metrics["early_half.tuned_kl_mean"] = tuned_mean
        result.metrics["early_half.layers_tuned_better_frac"] = better
        ratio = tuned_mean / logit_mean if logit_mean > 0 else float("inf")
        # passes when the tuned lens is better on average over the early half (strictly: a lens equal to
        # the logit lens, e.g. steps: 0 with init: identity, fails)
        result.add_check("early_half_heldout_kl_tuned_over_logit", ratio, 1.0 - 1e-6)
        result.add_check("save_load_max_abs_diff", roundtrip, 0.0)
        result.add_check("train_heldout_overlap_texts", overlap, 0)
        result.add_check("last_layer_tuned_kl", float(table["tuned_lens_kl"].iloc[-1]), LAST_LAYER_KL_TOLERANCE)
        result.summary = {
            "lens": origin,
            "saved_to": str(folder),
            "heldout": split.source,
            "heldout_texts": len(heldout),
            "heldout_tokens": n_eval,
            "train_lines_dropped_as_heldout": split.dropped,
            "early_half": {
                "layers": f"blocks 0..{int(early['layer'].max())} (resid_post; the embedding is not counted)",
                "criterion": "mean held-out KL over these layers, tuned < logit",
                "logit_lens_kl_mean": round(logit_mean, 4),
                "tuned_lens_kl_mean": round(tuned_mean, 4),
                "layers_where_tuned_is_better": f"{int(round(better * len(early)))} of {len(early)}",
            },
            "heldout_kl": {
                layer_label(int(r.layer)): [round(float(r.logit_lens_kl), 3), round(float(r.tuned_lens_kl), 3)]
                for r in table.itertuples()
            },
        }
        if cfg.load_path is None:
            result.summary["training"] = {
                k: result.metrics[f"train.{k}"]
                for k in ("tokens", "vocab_mass_covered", "objective_logit_lens", "objective_init", "objective_final")
            }


ANALYZERS = [TunedLensAnalyzer]
