"""Read and write the SAELens on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

Why: SAEs trained with SAELens (and many shared on the Hugging Face hub) are SAELens folders,
and an SAE trained here should open in SAELens. Both sides use the same parameter
names (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, threshold), so the weights are
copied, never renamed; only the config and the hook name need translating. Only JSON and
safetensors are read or written: a shared SAE file must not be able to run code (no pickle,
no ``torch.load``). sae_lens itself is not imported: this module works without it.

Config fields (SAELens 6.x ``SAEConfig`` and subclasses):

============================  =================================================================
SAELens                       interpsuite `SAEConfig`
============================  =================================================================
``architecture``              ``architecture``: ``"standard"`` <-> ``"relu"``, ``"topk"``,
                              ``"jumprelu"``; any other (gated, batchtopk, transcoder...) refused
``d_in`` / ``d_sae``          ``d_in`` / ``width``
``k`` (topk)                  ``k``
``dtype``                     ``dtype`` (``"torch.float32"`` spellings accepted); the tensors are
                              cast to it on load, as SAELens does
``metadata.hook_name``        ``hook`` through `HOOK_SITES` (below)
``metadata.model_name``       ``model_name``
``metadata.training_archi-    ``jumprelu_bandwidth`` / ``jumprelu_init_threshold`` (training only)
tecture_details``
``device``                    ignored on load (``device=`` argument); written as ``"cpu"``
============================  =================================================================

Settings with maths, on load:

* ``apply_b_dec_to_input`` False: pre = x @ W_enc + b_enc. Ours always subtracts b_dec first, so
  b_dec @ W_enc is folded into b_enc (equal up to float rounding, ~1e-7 relative).
* ``rescale_acts_by_decoder_norm`` True (topk; the SAELens training default): the top k are taken
  of pre * ||W_dec[i]|| and decoded through W_dec / ||W_dec[i]||; folded exactly like SAELens's
  ``fold_W_dec_norm`` (W_enc and b_enc scaled by the norms, W_dec rows made unit). Refused when a
  decoder row is zero (SAELens itself would reconstruct NaN).
* JumpReLU thresholds <= 0: SAELens computes ReLU(pre) * (pre > t), ours pre * (pre > t); they agree
  for t >= 0, and for t < 0 both equal ReLU(pre), so such thresholds are stored as 0 (exact).
* ``log_threshold`` (older SAELens JumpReLU files) becomes threshold = exp(log_threshold), as in SAELens.
* a ``scaling_factor`` tensor of all ones is dropped (SAELens does the same); any other is refused.
* Refused (`ConfigError` naming the field): ``normalize_activations`` other than ``"none"``
  (``expected_average_only_in`` and ``covariance_whitening`` need statistics the folder does not
  hold: fold them in SAELens with ``fold_activation_norm_scaling_factor`` /
  ``fold_activation_whitening`` and save again; ``constant_norm_rescale`` and ``layer_norm``
  normalise each token, which our SAE does not), ``finetuning_scaling_factor`` true, a pre-6.0
  ``activation_fn`` other than relu/topk.

Warned (`SAELensFormatWarning`), then loaded: config fields this module does not know (SAELens's
loader drops unknown fields too, so the maths is SAELens's own), ``k`` /
``rescale_acts_by_decoder_norm`` on a non-topk SAE (SAELens ignores them),
``reshape_activations="hook_z"`` (the SAE reads attn.z flattened over heads, [..., n_heads *
d_head]: flatten before `encode`), ``metadata.hook_head_index`` (the SAE reads one head's slice),
and a hook name outside `HOOK_SITES` (kept as written). SAELens training-only fields
(``l1_coefficient``, ``decoder_init_norm``, ...) and pre-6.0 top-level metadata (``hook_point``,
``context_size``, ...) are read silently.

Hook names (`HOOK_SITES`, per block L): TransformerLens ``blocks.L.<site>`` <-> ours
``blocks.L.<site>``. The SAE's inputs are the same numbers only when TransformerLens ran
without weight processing that moves activations: ``center_writing_weights`` (a
``from_pretrained`` default) mean-centres the residual stream of LayerNorm models (GPT-2,
Pythia); RMSNorm models (Llama, Gemma, Qwen) are unaffected. SAELens records the loading
options in ``metadata.model_from_pretrained_kwargs``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interpsuite.errors import ConfigError

from .model import DTYPES, SAEConfig, SparseAutoencoder

__all__ = [
    "ARCHITECTURE_NAMES",
    "HOOK_SITES",
    "SAELENS_CFG_FILE",
    "SAELENS_WEIGHTS_FILE",
    "SAELensFormatWarning",
    "from_saelens_hook",
    "load_saelens",
    "save_saelens",
    "to_saelens_hook",
]

SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
#: the SAELens version whose format `save_saelens` writes (and which the tests check against);
#: SAELens reads any folder whose metadata.sae_lens_version is >= 6.0 as a 6.x config
SAELENS_FORMAT_VERSION = "6.54.12"

#: our architecture -> SAELens ``architecture``
ARCHITECTURE_NAMES: dict[str, str] = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_FROM_SAELENS_ARCH = {value: key for key, value in ARCHITECTURE_NAMES.items()}

#: our per-block site -> TransformerLens / SAELens site (both prefixed ``blocks.L.``)
HOOK_SITES: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn.q": "attn.hook_q",
    "attn.k": "attn.hook_k",
    "attn.v": "attn.hook_v",
    "attn.z": "attn.hook_z",
    "attn.out": "hook_attn_out",
    "mlp.pre": "mlp.hook_pre",
    "mlp.up": "mlp.hook_pre_linear",
    "mlp.post": "mlp.hook_post",
    "mlp.out": "hook_mlp_out",
}
_TO_OUR_SITE = {value: key for key, value in HOOK_SITES.items()}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

#: top-level fields this module interprets
_HANDLED = {
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm",
    # pre-6.0 fields with maths, checked below
    "activation_fn", "activation_fn_str", "activation_fn_kwargs", "finetuning_scaling_factor",
}  # fmt: skip
#: pre-6.0 SAELens wrote the metadata at the top level; read as metadata, silently
_LEGACY_METADATA = {
    "model_name", "hook_name", "hook_point", "hook_layer", "hook_head_index", "hook_point_head_index",
    "model_class_name", "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
    "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path", "dataset_trust_remote_code",
    "sae_lens_version", "sae_lens_training_version", "hook_name_out", "hook_head_index_out",
    "hf_hook_name", "hf_hook_name_out",
}  # fmt: skip
#: SAELens training-only fields (a TrainingSAE's cfg.json): no effect on encode/decode
_TRAINING_ONLY = {
    "decoder_init_norm", "l1_coefficient", "lp_norm", "l1_warm_up_steps", "use_sparse_activations",
    "aux_loss_coefficient", "jumprelu_init_threshold", "jumprelu_bandwidth", "jumprelu_sparsity_loss_mode",
    "l0_coefficient", "l0_warm_up_steps", "pre_act_loss_coefficient", "jumprelu_tanh_scale",
    "jumprelu_ste_to_input", "target_l0",
}  # fmt: skip
_NORMALISATION_FIX = {
    "expected_average_only_in": "the inputs must be scaled by a factor this folder does not hold; fold it in "
    "SAELens (sae.fold_activation_norm_scaling_factor(factor)) and save again",
    "covariance_whitening": "the inputs must be whitened with statistics this folder does not hold; fold them in "
    "SAELens (sae.fold_activation_whitening(...)) and save again",
    "constant_norm_rescale": "each token is rescaled to norm sqrt(d_in) and back, which this SAE does not do",
    "layer_norm": "each token is layer-normalised and de-normalised, which this SAE does not do",
}


class SAELensFormatWarning(UserWarning):
    """A SAELens config holds something ignored or only partly represented here."""


# --- hook names --------------------------------------------------------------------------


def to_saelens_hook(hook: str) -> str | None:
    """Our ``blocks.L.<site>`` -> the TransformerLens name SAELens stores; None if unmapped."""
    match = _BLOCK.match(hook)
    if match is None or match.group(2) not in HOOK_SITES:
        return None
    return f"blocks.{match.group(1)}.{HOOK_SITES[match.group(2)]}"


def from_saelens_hook(hook_name: str) -> str | None:
    """A TransformerLens ``blocks.L.<hook>`` name -> ours; None if unmapped."""
    match = _BLOCK.match(hook_name)
    if match is None or match.group(2) not in _TO_OUR_SITE:
        return None
    return f"blocks.{match.group(1)}.{_TO_OUR_SITE[match.group(2)]}"


# --- save ------------------------------------------------------------------------------


def save_saelens(sae: SparseAutoencoder, directory: str | Path) -> Path:
    """Write `sae` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) that
    ``sae_lens.SAE.load_from_disk`` opens with the same reconstructions. Existing files of
    those names are replaced (weights first, config last, each atomically, so a folder with a
    cfg.json never pairs it with half-written weights). Returns the folder."""
    from safetensors.torch import save_file

    if not isinstance(sae, SparseAutoencoder):
        raise ConfigError(f"save_saelens needs a SparseAutoencoder, got {type(sae).__name__}")
    cfg = sae.cfg
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"save_saelens: {directory} is a file; give a folder to write the SAE to")
    hook_name = to_saelens_hook(cfg.hook) if cfg.hook else None
    if cfg.hook and hook_name is None:
        warnings.warn(
            f"save_saelens: hook {cfg.hook!r} has no TransformerLens name (see HOOK_SITES); "
            "it is written as it is, and SAELens's HookedSAETransformer will not find it",
            SAELensFormatWarning,
            stacklevel=2,
        )
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": cfg.model_name or None,
        "hook_name": hook_name or cfg.hook or None,
        "interpsuite_hook": cfg.hook or None,
    }
    if cfg.architecture == "jumprelu":
        metadata["training_architecture"] = "jumprelu"
        metadata["training_architecture_details"] = {
            "jumprelu_bandwidth": cfg.jumprelu_bandwidth,
            "jumprelu_init_threshold": cfg.jumprelu_init_threshold,
        }
    record: dict[str, Any] = {
        "architecture": ARCHITECTURE_NAMES[cfg.architecture],
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        record["k"] = cfg.k
        record["rescale_acts_by_decoder_norm"] = False
    record["metadata"] = metadata
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in sae.tensors().items()}
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, cfg_path = directory / SAELENS_WEIGHTS_FILE, directory / SAELENS_CFG_FILE
    partial = weights_path.with_name(weights_path.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, weights_path)
    partial = cfg_path.with_name(cfg_path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, cfg_path)
    return directory


# --- load ------------------------------------------------------------------------------


def load_saelens(
    directory: str | Path, d_in: int | None = None, device: str | torch.device | None = None
) -> SparseAutoencoder:
    """Read a SAELens SAE folder (``cfg.json`` + ``sae_weights.safetensors``; JSON and
    safetensors only). `d_in`, when given, is the caller's activation width and must match.
    See the module docstring for what is folded, warned about or refused; every refusal and
    every malformed folder is one `ConfigError` line."""
    directory = Path(directory).expanduser()
    if directory.is_file() and directory.name in (SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE):
        directory = directory.parent
    where = f"SAELens SAE {directory}"
    if not directory.is_dir():
        raise ConfigError(
            f"{where}: not a folder; give the folder holding {SAELENS_CFG_FILE} and {SAELENS_WEIGHTS_FILE}"
        )
    cfg_path, weights_path = directory / SAELENS_CFG_FILE, directory / SAELENS_WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise ConfigError(
                f"{where}: {path.name} is missing; a SAELens SAE folder holds {SAELENS_CFG_FILE} "
                f"and {SAELENS_WEIGHTS_FILE} (download or save it again)"
            )
    try:
        record = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: {SAELENS_CFG_FILE} is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: {SAELENS_CFG_FILE} is not a JSON object; the file is corrupt or not SAELens's")
    cfg, folds = _read_config(record, where)
    if d_in is not None and cfg.d_in != d_in:
        raise ConfigError(
            f"{where} was trained on {cfg.d_in}-dimensional activations ({cfg.hook or 'unknown hook'}), "
            f"but these are {d_in}-dimensional; load the SAE trained for this hook point"
        )
    tensors = _read_weights(weights_path, cfg, where)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        _fold(tensors, folds, where)
        for name, param in sae.named_parameters():
            param.copy_(tensors[name])
    if device is not None:
        sae.to(device)
    return sae


def _read_config(record: dict[str, Any], where: str) -> tuple[SAEConfig, dict[str, bool]]:
    """The SAEConfig a SAELens cfg.json describes, and which exact transforms its weights need."""
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where}: cfg.json 'metadata' is not an object; the file is corrupt")
    metadata = dict(metadata)
    for key in _LEGACY_METADATA & set(record):  # pre-6.0: metadata at the top level
        metadata.setdefault(key, record[key])
    for new, old in (("hook_name", "hook_point"), ("hook_head_index", "hook_point_head_index")):
        if metadata.get(new) is None and metadata.get(old) is not None:
            metadata[new] = metadata[old]
    unknown = sorted(set(record) - _HANDLED - _LEGACY_METADATA - _TRAINING_ONLY)
    notes: list[str] = []
    if unknown:
        notes.append(f"unknown fields {unknown} ignored (SAELens's loader drops them too)")

    # architecture (pre-6.0: activation_fn / activation_fn_str, topk k in activation_fn_kwargs)
    arch_name = record.get("architecture", "standard")
    activation = record.get("activation_fn", record.get("activation_fn_str", "relu"))
    kwargs = record.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: activation_fn_kwargs is not an object; the file is corrupt")
    k = record.get("k")
    if activation == "topk" and arch_name == "standard":
        arch_name, k = "topk", kwargs.get("k", k)
    elif activation not in ("relu", None) and activation != "topk":
        raise ConfigError(
            f"{where}: activation_fn={activation!r} is not supported (relu and topk are); "
            "this SAE's maths cannot be reproduced here"
        )
    if not isinstance(arch_name, str) or arch_name not in _FROM_SAELENS_ARCH:
        raise ConfigError(
            f"{where}: architecture {arch_name!r} is not supported; interpsuite reads {sorted(_FROM_SAELENS_ARCH)}"
        )
    architecture = _FROM_SAELENS_ARCH[arch_name]
    if record.get("finetuning_scaling_factor"):
        raise ConfigError(
            f"{where}: finetuning_scaling_factor is set; the latents are rescaled by a factor "
            "this SAE does not apply: fold it into W_dec in SAELens and save again"
        )

    d_in_value, width = record.get("d_in"), record.get("d_sae")
    for name, value in (("d_in", d_in_value), ("d_sae", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: cfg.json field {name} must be a positive integer, got {value!r}")
    dtype = str(record.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ConfigError(f"{where}: dtype {record.get('dtype')!r} is not one of {list(DTYPES)}")

    normalize = record.get("normalize_activations", "none")
    if normalize is None or normalize is False:
        normalize = "none"
    elif normalize is True:  # pre-6.0 boolean
        normalize = "expected_average_only_in"
    if normalize != "none":
        fix = _NORMALISATION_FIX.get(str(normalize), "it is not a SAELens setting")
        raise ConfigError(f"{where}: normalize_activations={normalize!r} cannot be reproduced: {fix}")
    b_dec_to_input = record.get("apply_b_dec_to_input", True)
    if not isinstance(b_dec_to_input, bool):
        raise ConfigError(f"{where}: apply_b_dec_to_input must be true or false, got {b_dec_to_input!r}")
    reshape = record.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z", None):
        raise ConfigError(f"{where}: reshape_activations={reshape!r} is unknown (SAELens has 'none' and 'hook_z')")
    if reshape == "hook_z":
        notes.append(
            "reshape_activations='hook_z': it reads attn.z flattened over heads "
            "([..., n_heads * d_head]); flatten before encode"
        )
    rescale = record.get("rescale_acts_by_decoder_norm", False)
    if not isinstance(rescale, bool):
        raise ConfigError(f"{where}: rescale_acts_by_decoder_norm must be true or false, got {rescale!r}")
    if architecture == "topk":
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
            raise ConfigError(f"{where}: a topk SAE needs an integer k between 1 and d_sae ({width}), got {k!r}")
    else:
        ignored = [name for name in ("k", "rescale_acts_by_decoder_norm") if name in record]
        if ignored:
            notes.append(f"{ignored} ignored for architecture {arch_name!r} (SAELens ignores them too)")
        rescale, k = False, 32
    if metadata.get("hook_head_index") is not None:
        notes.append(
            f"metadata.hook_head_index={metadata['hook_head_index']}: it reads only that head's slice of its hook"
        )

    hook_name = metadata.get("hook_name") or ""
    hook = from_saelens_hook(str(hook_name)) if hook_name else ""
    if hook is None:
        hook = str(hook_name)
        if metadata.get("interpsuite_hook") != hook_name:
            notes.append(f"hook {hook_name!r} has no interpsuite name (see HOOK_SITES); kept as written")
    details = metadata.get("training_architecture_details") or {}
    if not isinstance(details, dict):
        details = {}
    jumprelu: dict[str, float] = {}  # training settings: kept when valid, else our defaults
    for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
        value = details.get(name, record.get(name))
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            jumprelu[name] = float(value)
    cfg = SAEConfig(
        d_in=d_in_value,
        width=width,
        architecture=architecture,
        k=k,
        hook=hook,
        model_name=str(metadata.get("model_name") or ""),
        dtype=dtype,
        **jumprelu,
    )
    if notes:
        warnings.warn(f"{where}: " + "; ".join(notes), SAELensFormatWarning, stacklevel=3)
    return cfg, {"fold_b_dec": not b_dec_to_input, "fold_decoder_norm": rescale}


def _read_weights(path: Path, cfg: SAEConfig, where: str) -> dict[str, Tensor]:
    """The tensors by our names, cast to the config's dtype (as SAELens's loader does), checked
    against the config's shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{where}: {path.name} is not a readable safetensors file ({err}); it is corrupt") from None
    if "scaling_factor" in tensors:
        factor = tensors.pop("scaling_factor")
        if not torch.equal(factor, torch.ones_like(factor)):
            raise ConfigError(
                f"{where}: it holds a finetuning scaling_factor other than 1, which this SAE does not "
                "apply; fold it into W_dec in SAELens and save again"
            )
    if cfg.architecture == "jumprelu" and "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = torch.exp(tensors.pop("log_threshold"))
    expected = {
        "W_enc": (cfg.d_in, cfg.width),
        "b_enc": (cfg.width,),
        "W_dec": (cfg.width, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.architecture == "jumprelu":
        expected["threshold"] = (cfg.width,)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ConfigError(
            f"{where}: {path.name} holds {sorted(tensors)}, a {cfg.architecture} SAE needs "
            f"{sorted(expected)} (missing {missing}, unexpected {extra}); wrong or corrupt file"
        )
    dtype = cfg.torch_dtype
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ConfigError(
                f"{where}: {name} has shape {list(tensor.shape)}, but cfg.json (d_in={cfg.d_in}, "
                f"d_sae={cfg.width}) needs {list(shape)}; the folder mixes files of two SAEs"
            )
        if not tensor.is_floating_point():
            raise ConfigError(f"{where}: {name} is {tensor.dtype}, not a float tensor; the file is corrupt")
        if not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{where}: {name} holds NaN or infinite values; the file is corrupt")
        tensors[name] = tensor.to(dtype)
    return tensors


def _fold(tensors: dict[str, Tensor], folds: dict[str, bool], where: str) -> None:
    """Rewrite SAELens-only settings into equivalent weights for our forward pass (in place)."""
    if folds["fold_b_dec"]:  # x @ W_enc + b_enc == (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        w_enc = tensors["W_enc"]
        shift = tensors["b_dec"].double() @ w_enc.double()
        tensors["b_enc"] = (tensors["b_enc"].double() + shift).to(w_enc.dtype)
    if folds["fold_decoder_norm"]:  # topk of pre * n, decoded by W_dec / n (SAELens fold_W_dec_norm)
        norms = tensors["W_dec"].double().norm(dim=1)
        if not bool((norms > 0).all()):
            raise ConfigError(
                f"{where}: rescale_acts_by_decoder_norm is set but some W_dec rows are zero "
                "(SAELens would reconstruct NaN); the file is corrupt"
            )
        dtype = tensors["W_dec"].dtype
        tensors["W_dec"] = (tensors["W_dec"].double() / norms[:, None]).to(dtype)
        tensors["W_enc"] = (tensors["W_enc"].double() * norms[None, :]).to(dtype)
        tensors["b_enc"] = (tensors["b_enc"].double() * norms).to(dtype)
    if "threshold" in tensors:  # ReLU(pre) * (pre > t) == pre * (pre > max(t, 0))
        tensors["threshold"] = tensors["threshold"].clamp_min(0)
