"""The sparse autoencoder itself: config, encode/decode, decoder normalisation, save/load.

Parameter names follow SAELens (W_enc [d_in, width], b_enc, W_dec [width, d_in], b_dec,
threshold) so that reading a SAELens checkpoint later is a copy, not a rename. Three
architectures share one module because they differ only in the activation function:

* ``relu``: ReLU(pre); trained with an L1 penalty weighted by decoder row norms
  (Anthropic, April 2024 update), so the decoder is left free (no normalisation);
* ``topk``: the k largest of ReLU(pre) per token (Gao et al. 2024); sparsity is structural;
* ``jumprelu``: pre * (pre > threshold) (Rajamanoharan et al. 2024); the threshold is a
  positive per-latent parameter learnt through a straight-through estimator (`jumprelu`).

The pre-activation is (x - b_dec) @ W_enc + b_enc (SAELens ``apply_b_dec_to_input``).

Saved SAEs are interpsuite artifacts (kind ``"sae"``, safetensors + JSON, checksummed, never a
pickle): a shared SAE file must not be able to run code, and a file for another model or
another width must be refused with one line rather than mis-shaped later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interpsuite.artifacts import ModelFingerprint, load_artifact, save_artifact
from interpsuite.errors import ConfigError

__all__ = ["ARCHITECTURES", "SAE_KIND", "SAEConfig", "SparseAutoencoder", "jumprelu", "step"]

ARCHITECTURES = ("relu", "topk", "jumprelu")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
SAE_KIND = "sae"
#: the threshold is kept above this after every optimiser step (a JumpReLU threshold <= 0
#: would let negative pre-activations through: the activations must stay >= 0)
MIN_THRESHOLD = 1e-6


@dataclass
class SAEConfig:
    """What an SAE is: its shape, architecture and where it was trained (SAELens names).

    Invalid values are refused here, at construction, so a bad config fails before any
    activations are read or any weights are allocated."""

    d_in: int
    width: int  # SAELens d_sae
    architecture: str = "topk"
    k: int = 32  # topk only; 1 <= k <= width
    hook: str = ""  # our hook name, e.g. "blocks.15.resid_post"
    model_name: str = ""
    dtype: str = "float32"
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"sae.architecture {self.architecture!r} is unknown; choose one of {list(ARCHITECTURES)}")
        for name in ("d_in", "width", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"sae.{name} must be an integer, got {value!r}")
        if self.d_in < 1:
            raise ConfigError(f"sae.d_in must be >= 1 (the activation width), got {self.d_in}")
        if self.width < 1:
            raise ConfigError(f"sae.width must be >= 1 (the number of latents), got {self.width}")
        if self.architecture == "topk" and not 1 <= self.k <= self.width:
            raise ConfigError(f"sae.k must be between 1 and width ({self.width}) for a topk SAE, got {self.k}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"sae.dtype {self.dtype!r} is unknown; choose one of {list(DTYPES)}")
        if not self.jumprelu_bandwidth > 0:
            raise ConfigError(f"sae.jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        if not self.jumprelu_init_threshold > 0:
            raise ConfigError(f"sae.jumprelu_init_threshold must be > 0, got {self.jumprelu_init_threshold}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Any, where: str = "sae config") -> SAEConfig:
        """Rebuild from a saved dict; unknown or missing keys are a ConfigError (corrupt or newer file)."""
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: the saved config is not an object; the file is corrupt or not an SAE")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown config keys {unknown} (newer interpsuite, or corrupt)")
        missing = sorted(name for name in ("d_in", "width") if name not in record)
        if missing:
            raise ConfigError(f"{where}: the saved config lacks {missing}; the file is corrupt")
        try:
            return cls(**record)
        except TypeError as err:
            raise ConfigError(f"{where}: the saved config does not fit SAEConfig ({err})") from None


# --- JumpReLU with straight-through threshold gradients ------------------------------------


def _kernel(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Rectangle kernel K((pre - threshold) / bandwidth) / bandwidth: the pseudo-derivative of
    the Heaviside step at the threshold (Rajamanoharan et al. 2024, eq. 11)."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold).to(grad.dtype)
        grad_threshold = -(threshold * _kernel(pre, threshold, ctx.bandwidth) * grad)
        grad_threshold = grad_threshold.reshape(-1, threshold.shape[-1]).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(_kernel(pre, threshold, ctx.bandwidth) * grad)
        grad_threshold = grad_threshold.reshape(-1, threshold.shape[-1]).sum(0)
        return torch.zeros_like(pre), grad_threshold, None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """pre * (pre > threshold); the threshold's gradient comes from the kernel estimator
    (pre's own gradient passes where the unit is on, as in the paper)."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Heaviside(pre - threshold): the L0 of JumpReLU, differentiable in the threshold only."""
    return _Step.apply(pre, threshold, bandwidth)


# --- the module ---------------------------------------------------------------------------


class SparseAutoencoder(torch.nn.Module):
    """An SAE over one hook point's activations: [..., d_in] <-> [..., width] latents (>= 0).

    Initialisation (Gao et al. 2024; Anthropic 2024): decoder rows random unit directions,
    encoder = decoder transposed (tied init, so every latent starts as a matched
    filter/reconstructor pair), biases zero; `seed` makes it reproducible. `train_sae`
    sets b_dec to the geometric median of the first batch."""

    def __init__(self, cfg: SAEConfig, seed: int = 0, device: str | torch.device | None = None):
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise ConfigError(f"SparseAutoencoder needs an SAEConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.cfg = cfg
        #: the model this SAE was trained on, when known (set by load or by the caller)
        self.fingerprint: ModelFingerprint | None = None
        dtype = cfg.torch_dtype
        generator = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.width, cfg.d_in, generator=generator, dtype=torch.float32)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_enc = torch.nn.Parameter(w_dec.t().contiguous().to(dtype))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.width, dtype=dtype))
        self.W_dec = torch.nn.Parameter(w_dec.to(dtype))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.full((cfg.width,), cfg.jumprelu_init_threshold, dtype=dtype))
        if device is not None:
            self.to(device)

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = f", k={cfg.k}" if cfg.architecture == "topk" else ""
        return f"{cfg.architecture}, d_in={cfg.d_in}, width={cfg.width}{k}, hook={cfg.hook!r}"

    # --- forward pieces ---------------------------------------------------------------
    def _check_input(self, x: Tensor, size: int, what: str) -> None:
        if x.shape[-1] != size:
            raise ConfigError(
                f"SAE {what} has last dimension {x.shape[-1]}, but this SAE expects {size} "
                f"({self.cfg.hook or 'its hook point'}); pass activations of the hook it was trained on"
            )

    def pre_acts(self, x: Tensor) -> Tensor:
        """(x - b_dec) @ W_enc + b_enc: the encoder's input to the activation function."""
        self._check_input(x, self.cfg.d_in, "input")
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The architecture's activation function on pre-activations (>= 0 everywhere)."""
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return jumprelu(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> feature activations [..., width] (>= 0)."""
        return self.activate(self.pre_acts(x))

    def decode(self, acts: Tensor) -> Tensor:
        """[..., width] -> [..., d_in]: acts @ W_dec + b_dec."""
        self._check_input(acts, self.cfg.width, "latent input")
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # --- constraints used during training ---------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (topk / jumprelu training). Without it the
        decoder could grow while activations shrink, so activation sizes would mean nothing."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of W_dec's gradient along each (unit) row: with rows renormalised after
        every step it only changes their length, which the renormalisation undoes (Bricken et
        al. 2023; Gao et al. 2024), and Adam would otherwise spend its step size on it."""
        if self.W_dec.grad is None:
            return
        rows = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * rows).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * rows)

    @torch.no_grad()
    def clamp_threshold(self) -> None:
        if self.cfg.architecture == "jumprelu":
            self.threshold.clamp_(min=MIN_THRESHOLD)

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    # --- save / load ------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """The weights by SAELens name (what is saved)."""
        return {name: param.detach() for name, param in self.named_parameters()}

    def save(self, directory: str | Path, fingerprint: ModelFingerprint | None = None) -> Path:
        """Write the SAE as an artifact folder (kind "sae"). `fingerprint` (or the one set on
        the SAE) names the model it belongs to; without one a placeholder with only d_in is
        stored, and `load` gives back fingerprint None."""
        fingerprint = fingerprint or self.fingerprint or _placeholder_fingerprint(self.cfg)
        return save_artifact(directory, SAE_KIND, self.tensors(), self.cfg.to_dict(), fingerprint)

    @classmethod
    def load(
        cls, directory: str | Path, d_in: int | None = None, device: str | torch.device | None = None
    ) -> SparseAutoencoder:
        """Read an SAE saved by `save`. `d_in` (the caller's activation width), when given, must
        match. A corrupt or foreign folder is one ConfigError line."""
        artifact = load_artifact(directory, SAE_KIND, what=f"SAE {directory}")
        cfg = SAEConfig.from_dict(artifact.spec, where=f"SAE {directory}")
        if d_in is not None and cfg.d_in != d_in:
            raise ConfigError(
                f"SAE {directory} was trained on {cfg.d_in}-dimensional activations ({cfg.hook or 'unknown hook'}), "
                f"but these are {d_in}-dimensional; load the SAE trained for this hook point"
            )
        sae = cls(cfg)
        expected = {name: tuple(t.shape) for name, t in sae.tensors().items()}
        found = {name: tuple(t.shape) for name, t in artifact.tensors.items()}
        if found != expected:
            raise ConfigError(
                f"SAE {directory}: its tensors {found} do not fit its config (expected {expected}); the file is corrupt"
            )
        with torch.no_grad():
            for name, param in sae.named_parameters():
                tensor = artifact.tensors[name]
                if tensor.dtype != param.dtype:
                    raise ConfigError(f"SAE {directory}: {name} is {tensor.dtype}, config says {cfg.dtype}; corrupt")
                param.copy_(tensor)
        placeholder = _placeholder_fingerprint(cfg)
        sae.fingerprint = None if artifact.model == placeholder else artifact.model
        if device is not None:
            sae.to(device)
        return sae


def _placeholder_fingerprint(cfg: SAEConfig) -> ModelFingerprint:
    """Stored when the model is unknown (synthetic data, tests): only the width is asserted."""
    return ModelFingerprint(
        name=cfg.model_name, architecture="", n_layers=0, d_model=cfg.d_in, vocab_size=0, weights_sha256=""
    )
