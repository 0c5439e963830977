"""Fitted objects saved to disk (failure predictors, anomaly detectors, ...): safetensors + JSON.

Such an object is only meaningful for the model it was fitted on, and it is shared between
people: so it is never a pickle (loading one could run anyone's code), it names the model it
belongs to by a fingerprint of that model's weights, and loading checks the format version,
the kind, the file's checksum and the fingerprint before anything is used.

On disk an artifact is a folder holding two files with fixed names (nothing read from disk
chooses a path):

* `tensors.safetensors`: every array (weights, means, precision matrices, thresholds);
* `artifact.json`: {"kind", "format_version", "interpsuite_version", "created", "model"
  (the fingerprint), "spec" (what the kind needs to rebuild itself: feature lists, layers,
  options), "tensors" (name -> shape), "sha256" (of tensors.safetensors)}.

Both are written to temporary names and renamed into place, the JSON last: a folder with a
JSON is complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["ARTIFACT_FORMAT", "Artifact", "ModelFingerprint", "load_artifact", "save_artifact"]

#: bumped when the layout of artifact.json or the meaning of its fields changes
ARTIFACT_FORMAT = 1
TENSORS_FILE = "tensors.safetensors"
META_FILE = "artifact.json"
#: embedding rows hashed for the fingerprint: every k-th row (plus the last), so a fingerprint
#: costs milliseconds even for large vocabularies and still changes with any fine-tune
_ROW_STRIDE = 97


@dataclass(frozen=True)
class ModelFingerprint:
    """Which model an artifact belongs to: its shape and a hash of its token embeddings."""

    name: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    weights_sha256: str

    @classmethod
    def of(cls, model) -> ModelFingerprint:
        """The fingerprint of a loaded `HookedModel` (embedding rows as float32 bytes)."""
        info = model.info
        weight = model.hf_model.get_input_embeddings().weight.detach()
        rows = torch.cat([torch.arange(0, weight.shape[0], _ROW_STRIDE), torch.tensor([weight.shape[0] - 1])])
        sample = weight.index_select(0, rows.to(weight.device)).to(torch.float32).cpu().contiguous()
        digest = hashlib.sha256(sample.numpy().tobytes()).hexdigest()
        return cls(info.name, info.architecture, int(info.n_layers), int(info.d_model), int(weight.shape[0]), digest)

    @classmethod
    def from_json(cls, record: Any, where: str) -> ModelFingerprint:
        try:
            return cls(**{name: record[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise ConfigError(f"{where}: the model fingerprint is incomplete (corrupt, or not ours)") from None

    def mismatch(self, other: ModelFingerprint) -> str | None:
        """Why `other` is not this model (None when it is)."""
        if self == other:
            return None
        if (self.architecture, self.n_layers, self.d_model, self.vocab_size) != (
            other.architecture,
            other.n_layers,
            other.d_model,
            other.vocab_size,
        ):
            fitted = f"{self.name} ({self.architecture}, {self.n_layers} layers, d_model {self.d_model})"
            given = f"{other.name} ({other.architecture}, {other.n_layers} layers, d_model {other.d_model})"
            return f"it was fitted on {fitted} but the model is {given}"
        return (
            f"it was fitted on {self.name} but the weights of {other.name} differ (embedding hash "
            f"{self.weights_sha256[:12]} vs {other.weights_sha256[:12]}: another checkpoint, fine-tune or dtype)"
        )


@dataclass
class Artifact:
    kind: str
    spec: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    model: ModelFingerprint
    format_version: int = ARTIFACT_FORMAT
    interpsuite_version: str = ""
    created: str = ""
    path: Path | None = field(default=None, compare=False)

    def check_model(self, model, what: str | None = None) -> None:
        """Refuse a model other than the one this artifact was fitted on (one line, exit 2)."""
        reason = self.model.mismatch(ModelFingerprint.of(model))
        if reason is not None:
            where = what or f"{self.kind} {self.path or ''}".strip()
            raise ConfigError(f"{where}: {reason}; fit a new one on this model")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(
    directory: str | Path,
    kind: str,
    tensors: dict[str, torch.Tensor],
    spec: dict[str, Any],
    model: ModelFingerprint,
) -> Path:
    """Write an artifact folder (created if needed; an artifact already there is replaced)."""
    from safetensors.torch import save_file

    from . import __version__

    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{kind}: {directory} exists and is not a folder; give a folder path to save into")
    directory.mkdir(parents=True, exist_ok=True)
    clean = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    tmp_tensors = directory / f".{TENSORS_FILE}.tmp"
    save_file(clean, str(tmp_tensors))
    meta = {
        "kind": kind,
        "format_version": ARTIFACT_FORMAT,
        "interpsuite_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": asdict(model),
        "spec": spec,
        "tensors": {name: list(t.shape) for name, t in clean.items()},
        "sha256": _sha256(tmp_tensors),
    }
    tmp_meta = directory / f".{META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True, default=_jsonable), encoding="utf-8")
    os.replace(tmp_tensors, directory / TENSORS_FILE)
    os.replace(tmp_meta, directory / META_FILE)
    return directory


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_artifact(directory: str | Path, kind: str, what: str | None = None) -> Artifact:
    """Read and verify an artifact folder written by `save_artifact` for `kind`.

    Every way a folder can be wrong (missing, another kind, another format version, a JSON
    or tensor file that does not parse, a checksum that does not match) is one ConfigError
    line naming the problem and what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = what or kind
    directory = Path(directory).expanduser()
    if directory.is_file() and directory.name in (META_FILE, TENSORS_FILE):
        directory = directory.parent
    meta_path, tensors_path = directory / META_FILE, directory / TENSORS_FILE
    if not directory.is_dir():
        raise ConfigError(f"{where}: {directory} is not a folder; give the folder a {kind} was saved to")
    if not meta_path.is_file() or not tensors_path.is_file():
        raise ConfigError(
            f"{where}: {directory} lacks {META_FILE} or {TENSORS_FILE}; it is not a saved {kind} (or saving stopped)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: {meta_path} is corrupt (not valid JSON: {err}); save the {kind} again") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: {meta_path} is corrupt (not a JSON object); save the {kind} again")
    if meta.get("kind") != kind:
        raise ConfigError(f"{where}: {directory} holds an artifact of kind {meta.get('kind')!r}, not {kind!r}")
    version = meta.get("format_version")
    if version != ARTIFACT_FORMAT:
        raise ConfigError(
            f"{where}: {directory} is format version {version!r} (written by interpsuite "
            f"{meta.get('interpsuite_version', '?')}); this interpsuite reads version {ARTIFACT_FORMAT}: fit it again"
        )
    if meta.get("sha256") != _sha256(tensors_path):
        raise ConfigError(f"{where}: {tensors_path} does not match its checksum (corrupt or edited); save it again")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{where}: {tensors_path} is not a readable safetensors file ({err})") from None
    expected = meta.get("tensors") or {}
    if {name: list(t.shape) for name, t in tensors.items()} != expected:
        raise ConfigError(f"{where}: the tensors in {tensors_path} differ from those {META_FILE} lists; save it again")
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {meta_path} has no 'spec' object; the file is corrupt or not ours")
    return Artifact(
        kind=kind,
        spec=spec,
        tensors=tensors,
        model=ModelFingerprint.from_json(meta.get("model"), where),
        format_version=version,
        interpsuite_version=str(meta.get("interpsuite_version", "")),
        created=str(meta.get("created", "")),
        path=directory,
    )
