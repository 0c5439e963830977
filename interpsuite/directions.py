"""Direction files: the hand-off format between analyzers that find directions and those that use them.

`concept_direction` and `steering` write directions; `steering` (and user code) reads them.
A direction is a 1-D float32 tensor [d_model] named `direction` in a .safetensors file, with
string metadata (`hook`: the hook point it lives at, `model`, `method`, ...), or the same as a
.json object {"direction": [...], "hook": ...}. Safetensors and JSON, never pickle, so a file
from anyone can be opened safely.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["DIRECTION_SUFFIXES", "read_direction", "write_direction"]

DIRECTION_SUFFIXES = (".safetensors", ".json")


def write_direction(path: str | Path, direction: torch.Tensor, hook: str | None = None, **meta: str) -> Path:
    """Write a direction in the documented format (.safetensors or .json, by suffix)."""
    path = Path(path)
    vector = direction.detach().to(torch.float32).cpu().flatten().contiguous()
    info = {k: str(v) for k, v in {"hook": hook, **meta}.items() if v is not None}
    if path.suffix == ".json":
        path.write_text(json.dumps({"direction": vector.tolist(), **info}), encoding="utf-8")
    else:
        from safetensors.torch import save_file

        save_file({"direction": vector}, str(path), metadata=info)
    return path


def read_direction(path: str | Path, what: str = "steering.direction_path") -> tuple[torch.Tensor, dict[str, str]]:
    """(direction [d] float32, metadata such as {"hook": ...}) from a .safetensors or .json file."""
    path = Path(path).expanduser()
    if path.suffix not in DIRECTION_SUFFIXES:
        raise ConfigError(
            f"{what}: {path} must be .safetensors (tensor 'direction') or .json ({{\"direction\": [...]}}), "
            f"got {path.suffix!r}"
        )
    if not path.is_file():
        raise ConfigError(f"{what}: file {path} not found")
    if path.suffix == ".json":
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{what}: {path} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("direction"), list):
            raise ConfigError(f'{what}: {path} needs an object with a list "direction": {{"direction": [...]}}')
        try:
            vector = torch.tensor(record["direction"], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ConfigError(f'{what}: {path}: "direction" must be a flat list of numbers') from None
        meta = {k: str(v) for k, v in record.items() if k != "direction" and isinstance(v, (str, int, float))}
    else:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                if "direction" not in handle.keys():
                    raise ConfigError(f"{what}: {path} has tensors {list(handle.keys())} but no 'direction'")
                vector = handle.get_tensor("direction").to(torch.float32)
                meta = dict(handle.metadata() or {})
        except SafetensorError as err:
            raise ConfigError(f"{what}: {path} is not a readable safetensors file ({err})") from None
    if vector.ndim != 1 or vector.numel() == 0:
        raise ConfigError(f"{what}: the direction in {path} must be 1-D [d_model], got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ConfigError(f"{what}: the direction in {path} has non-finite entries")
    return vector, meta
