"""Workbench patches on disk: export/import (JSON + safetensors) and export as a PEFT LoRA adapter.

Formats (JSON and safetensors only: a shared patch file must not be able to run code):

- "patches": `patches.json` (the patch specs, the SAE's path/hook/width and the model's
  fingerprint) + `patches.safetensors` (`decoder_rows`: W_dec of each patched feature, so an
  import can tell a patch list made for another SAE of the same width; `steering`: the summed
  vector of the enabled "add" patches). `import_patches` checks all three before replacing.
- "lora": a PEFT LoRA adapter that reproduces the enabled "add" patches as a weight edit.
  Why this is exact: an "add" patch of `value` on feature f adds `value * W_dec[f]` (decode is
  linear) to the activation at the hook point, at every position, whatever the input. At
  `blocks.L.resid_post` (= resid_mid + mlp_out) that is a constant added to the output of layer
  L's MLP down projection, i.e. a bias on it. PEFT (>= 0.14) gives lora_B a bias with
  `lora_bias=True`; with lora_A = lora_B.weight = 0, r = alpha = 1 (scaling 1), the adapter adds
  exactly that bias. Other hook points map the same way (resid_mid / attn.out: the attention
  output projection of L; mlp.out: the down projection of L; resid_pre of L > 0: the down
  projection of L - 1). "set" and "scale" depend on the input activation, so no bias can
  express them: they are refused with the reason.
- "saelens": the SAE itself as a SAELens folder (`save_saelens`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interpsuite.artifacts import ModelFingerprint
from interpsuite.errors import ConfigError
from interpsuite.hooks import parse_hook_name

if TYPE_CHECKING:
    from .workbench import Workbench

__all__ = [
    "EXPORT_FORMATS",
    "PATCHES_JSON",
    "PATCHES_TENSORS",
    "export",
    "export_lora",
    "export_patches",
    "export_saelens",
    "import_patches",
    "lora_target",
    "read_patches",
]

EXPORT_FORMATS = ("patches", "lora", "saelens")
PATCHES_JSON = "patches.json"
PATCHES_TENSORS = "patches.safetensors"
PATCHES_KIND = "interpsuite_sae_patches"
PATCHES_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _write_json(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(partial), metadata={"format": "pt"})
    os.replace(partial, path)


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"export: {folder} is a file; give a folder to write into")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- patches -----------------------------------------------------------------------------------


def export_patches(workbench: Workbench, folder: str | Path) -> list[str]:
    """Write patches.json + patches.safetensors (see the module doc); returns the file names."""
    folder = _folder(folder)
    patches = workbench.patches()
    w_dec = workbench.sae.W_dec.detach().float().cpu()
    rows = w_dec[[p.feature for p in patches]] if patches else torch.zeros(0, workbench.d_in)
    record = {
        "kind": PATCHES_KIND,
        "version": PATCHES_VERSION,
        "sae": {
            "path": workbench.sae_path,
            "hook": workbench.hook,
            "width": workbench.width,
            "d_in": workbench.d_in,
            "architecture": workbench.architecture,
        },
        "model": vars(ModelFingerprint.of(workbench.model)),
        "patches": [{k: v for k, v in p.to_json().items() if k != "id"} for p in patches],
    }
    _save_tensors(folder / PATCHES_TENSORS, {"decoder_rows": rows, "steering": workbench.steering_vector(patches)})
    _write_json(folder / PATCHES_JSON, record)
    return [PATCHES_JSON, PATCHES_TENSORS]


def read_patches(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """patches.json and its tensors, each checked for shape (one ConfigError line per problem)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if folder.is_file() and folder.name in (PATCHES_JSON, PATCHES_TENSORS):
        folder = folder.parent
    json_path, tensors_path = folder / PATCHES_JSON, folder / PATCHES_TENSORS
    if not json_path.is_file() or not tensors_path.is_file():
        raise ConfigError(f"patches: {folder.name} lacks {PATCHES_JSON} or {PATCHES_TENSORS}; export the patches again")
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"patches: {PATCHES_JSON} is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(record, dict) or record.get("kind") != PATCHES_KIND:
        raise ConfigError(f"patches: {PATCHES_JSON} is not a workbench patch file (kind {PATCHES_KIND!r})")
    if record.get("version") != PATCHES_VERSION:
        raise ConfigError(f"patches: version {record.get('version')!r} is not {PATCHES_VERSION}; export them again")
    specs = record.get("patches")
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ConfigError(f"patches: {PATCHES_JSON} has no list of patches; the file is corrupt")
    if not isinstance(record.get("sae"), dict) or not isinstance(record.get("model"), dict):
        raise ConfigError(f"patches: {PATCHES_JSON} lacks the SAE or model description; the file is corrupt")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as err:
        raise ConfigError(
            f"patches: {PATCHES_TENSORS} is not a safetensors file ({err}); the file is corrupt"
        ) from None
    rows = tensors.get("decoder_rows")
    if rows is None or rows.ndim != 2 or rows.shape[0] != len(specs):
        raise ConfigError(f"patches: {PATCHES_TENSORS} does not hold one decoder row per patch; the file is corrupt")
    return record, tensors


def import_patches(workbench: Workbench, folder: str | Path) -> list:
    """Replace the workbench's patches by those in `folder`, after checking they were made for
    this model, this hook point and this SAE (its decoder rows of the patched features)."""
    record, tensors = read_patches(folder)
    sae = record["sae"]
    if sae.get("hook") != workbench.hook or sae.get("width") != workbench.width:
        raise ConfigError(
            f"patches: made for an SAE at {sae.get('hook')} with width {sae.get('width')}, but the loaded SAE is at "
            f"{workbench.hook} with width {workbench.width}; load that SAE first"
        )
    reason = ModelFingerprint.from_json(record["model"], "patches").mismatch(ModelFingerprint.of(workbench.model))
    if reason is not None:
        raise ConfigError(f"patches: {reason}; import them on the model they were made for")
    specs = record["patches"]
    features = [workbench.check_feature(s.get("feature")) for s in specs]
    if features:
        mine = workbench.sae.W_dec.detach().float().cpu()[features]
        theirs = tensors["decoder_rows"].float()
        if theirs.shape != mine.shape or not torch.allclose(mine, theirs, rtol=1e-4, atol=1e-6):
            raise ConfigError(
                "patches: the decoder rows of the patched features differ from the loaded SAE's; "
                "they were made for another SAE of the same shape (load it first)"
            )
    return workbench.replace_patches(specs)


# --- LoRA --------------------------------------------------------------------------------------


def lora_target(model: Any, hook: str) -> tuple[str, torch.nn.Module]:
    """(module name in the HF model, module) whose output bias equals an addition at `hook`;
    ConfigError (one line) where no single projection's output feeds that activation additively."""
    layer, site = parse_hook_name(hook)
    info = model.info
    adapter = model.adapter
    if info.post_norm:
        raise ConfigError(
            f"{info.name} normalises each block output before adding it to the residual, so no projection "
            f"bias adds a constant at {hook}; export the patches (format 'patches') instead"
        )
    parallel = bool(getattr(model.hf_model.config, "use_parallel_residual", False))
    if layer is not None and site in ("resid_post", "mlp.out"):
        module = adapter.mlp_output_projection(layer)
    elif layer is not None and site in ("resid_mid", "attn.out") and not parallel:
        module = adapter.attention_output_projection(layer)
    elif layer is not None and site == "resid_pre" and layer > 0:
        module = adapter.mlp_output_projection(layer - 1)
    else:
        raise ConfigError(
            f"no projection of {info.name} adds its output at {hook}; a LoRA export needs an SAE at "
            "blocks.L.resid_post, mlp.out, attn.out, resid_mid or resid_pre (L > 0)"
        )
    for name, candidate in model.hf_model.named_modules():
        if candidate is module:
            return name, module
    raise ConfigError(f"the projection for {hook} is not a named module of {info.name}; export 'patches' instead")


def _is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def export_lora(workbench: Workbench, folder: str | Path) -> list[str]:
    """A PEFT LoRA adapter folder reproducing the enabled "add" patches (see the module doc);
    refused with the reason when a "set" or "scale" patch is enabled or nothing is to export."""
    from peft import LoraConfig

    patches = [p for p in workbench.patches() if p.enabled]
    other = [p for p in patches if p.kind != "add"]
    if other:
        p = other[0]
        raise ConfigError(
            f"patch {p.id} ({p.kind} feature {p.feature}) depends on the input activation, so no LoRA weight can "
            "express it; only 'add' patches (steering vectors) export as LoRA: disable it or export 'patches'"
        )
    if not patches:
        raise ConfigError("no enabled 'add' patch to export as LoRA; add one (kind 'add') first")
    name, module = lora_target(workbench.model, workbench.hook)
    conv1d = _is_conv1d(module)
    if not isinstance(module, torch.nn.Linear) and not conv1d:
        raise ConfigError(f"{name} is a {type(module).__name__}, not a Linear layer; LoRA export needs a Linear")
    if conv1d:
        d_in, d_out = int(module.weight.shape[0]), int(module.weight.shape[1])
    else:
        d_in, d_out = int(module.in_features), int(module.out_features)
    vector = workbench.steering_vector(patches)
    if vector.shape[0] != d_out:  # pragma: no cover - the splice checked d_in against d_model
        raise ConfigError(f"the steering vector has {vector.shape[0]} entries but {name} outputs {d_out}")
    if not bool(torch.isfinite(vector).all()) or not math.isfinite(float(vector.abs().max())):
        raise ConfigError("the steering vector is not finite; lower the patch values")
    folder = _folder(folder)
    config = LoraConfig(
        r=1,
        lora_alpha=1,  # scaling alpha / r = 1: the bias is added as it is
        lora_dropout=0.0,
        target_modules=[name],
        lora_bias=True,
        fan_in_fan_out=conv1d,
        base_model_name_or_path=getattr(workbench.model.hf_model, "name_or_path", None) or None,
    )
    config.save_pretrained(str(folder))
    prefix = f"base_model.model.{name}"
    _save_tensors(
        folder / ADAPTER_WEIGHTS,
        {
            f"{prefix}.lora_A.weight": torch.zeros(1, d_in),
            f"{prefix}.lora_B.weight": torch.zeros(d_out, 1),
            f"{prefix}.lora_B.bias": vector.float(),
        },
    )
    return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


# --- SAELens and the dispatcher -----------------------------------------------------------------


def export_saelens(workbench: Workbench, folder: str | Path) -> list[str]:
    """The loaded SAE as a SAELens folder (cfg.json + sae_weights.safetensors)."""
    from .model import SparseAutoencoder
    from .saelens import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE, save_saelens

    if not isinstance(workbench.sae, SparseAutoencoder):
        kind = type(workbench.sae).__name__
        raise ConfigError(f"the loaded SAE is a {kind}; only interpsuite SAEs export to SAELens")
    save_saelens(workbench.sae, _folder(folder))
    return [SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE]


def export(workbench: Workbench, folder: str | Path, format: str) -> list[str]:
    """Write `format` ("patches", "lora" or "saelens") into `folder`; returns the file names."""
    if format == "patches":
        return export_patches(workbench, folder)
    if format == "lora":
        return export_lora(workbench, folder)
    if format == "saelens":
        return export_saelens(workbench, folder)
    raise ConfigError(f"export format {format!r} is unknown; choose one of {list(EXPORT_FORMATS)}")
