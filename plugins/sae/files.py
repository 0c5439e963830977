"""One entry point for SAE folders in either format: ours (artifact.json) or SAELens's (cfg.json).

Why: analyzers and configs take `sae: PATH`, and users have both kinds (trained here, or
downloaded from a SAELens release). `read_sae_config` reads only the JSON, so an analyzer's
`validate` can refuse an SAE for another hook point or width before any weights load;
`load_sae` then reads the weights (safetensors only, never pickle) with the same checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from interpsuite.artifacts import META_FILE
from interpsuite.errors import ConfigError

from .model import SAE_KIND, SAEConfig, SparseAutoencoder
from .saelens import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE, _read_config, load_saelens

__all__ = ["load_sae", "read_sae_config", "sae_format"]


def _folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if folder.is_file() and folder.name in (META_FILE, SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE):
        folder = folder.parent
    return folder


def sae_format(path: str | Path) -> str:
    """ "interpsuite" or "saelens", by the files in the folder; anything else is one ConfigError line."""
    folder = _folder(path)
    if not folder.is_dir():
        raise ConfigError(
            f"SAE {folder}: not a folder; give a folder saved by sae_train (artifact.json) or a SAELens SAE "
            f"({SAELENS_CFG_FILE} + {SAELENS_WEIGHTS_FILE})"
        )
    if (folder / META_FILE).is_file():
        return "interpsuite"
    if (folder / SAELENS_CFG_FILE).is_file():
        return "saelens"
    raise ConfigError(
        f"SAE {folder}: holds neither {META_FILE} (an interpsuite SAE) nor {SAELENS_CFG_FILE} (a SAELens SAE); "
        "give the folder the SAE was saved to"
    )


def read_sae_config(path: str | Path) -> SAEConfig:
    """The SAE's config from its JSON alone (no weights read): for checks before loading."""
    folder = _folder(path)
    kind = sae_format(folder)
    name = META_FILE if kind == "interpsuite" else SAELENS_CFG_FILE
    where = f"SAE {folder}"
    try:
        record = json.loads((folder / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: {name} is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: {name} is not a JSON object; the file is corrupt")
    if kind == "saelens":
        import warnings

        with warnings.catch_warnings():  # load_sae warns once, when it really loads
            warnings.simplefilter("ignore")
            return _read_config(record, where)[0]
    if record.get("kind") != SAE_KIND:
        raise ConfigError(f"{where}: holds an artifact of kind {record.get('kind')!r}, not an SAE")
    return SAEConfig.from_dict(record.get("spec"), where)


def load_sae(path: str | Path, d_in: int | None = None, device: str | torch.device | None = None) -> SparseAutoencoder:
    """Load an SAE folder of either format; `d_in`, when given, must match its input width."""
    folder = _folder(path)
    if sae_format(folder) == "saelens":
        return load_saelens(folder, d_in=d_in, device=device)
    return SparseAutoencoder.load(folder, d_in=d_in, device=device)
