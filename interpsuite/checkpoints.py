"""Find the checkpoints of one training run: HF folders, Trainer output, Lightning .ckpt, a monitor.

`discover(source, base_model)` turns `checkpoints=<dir or list>` into checkpoints sorted by
training step, or into a `MonitorSource` (a directory written by the training monitor, whose
per-step run directories are read instead of loading any model). Every mistake is found
here, before any model weights load, and raised as one `ConfigError` line: a directory with
no checkpoints, checkpoints of different architectures, a .ckpt without `temporal.base_model`,
a .ckpt whose tensors do not fit the base model.

A Lightning .ckpt is read with `torch.load(..., weights_only=True)` (tensors and plain values,
never arbitrary pickled objects). It has no HF config, so the architecture and tokenizer come
from `temporal.base_model` (an embedded model name or an HF folder); its `state_dict` keys are
matched to the base model's after stripping a common prefix such as `model.` (the attribute
the LightningModule keeps the HF model in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models.info import ModelInfo

MONITOR_FILE = "monitor.json"
STEPS_FILE = "steps.jsonl"
TRAINER_STATE = "trainer_state.json"
#: files that make a folder an HF model folder (beside config.json)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
LOOKED_FOR = (
    f"{MONITOR_FILE} (a training monitor), config.json with model weights ({', '.join(WEIGHT_FILES[::2])}), "
    "checkpoint-* or other HF model subfolders, *.ckpt files"
)
#: the fields that must agree between the checkpoints of one run (ModelInfo attribute -> label)
ARCHITECTURE_FIELDS = {
    "architecture": "model_type",
    "n_layers": "layers",
    "d_model": "d_model",
    "n_heads": "heads",
    "vocab_size": "vocab",
}


@dataclass
class Checkpoint:
    """One checkpoint: where it is, its training step and the architecture it claims."""

    path: Path
    step: int
    kind: str  # "hf" (a folder with config.json + weights) or "lightning" (a .ckpt file)
    info: ModelInfo
    #: the .ckpt's state_dict key prefix that is stripped ("" for none); lightning only
    prefix: str = ""

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def run_name(self) -> str:
        """The folder of its run under `<run>/checkpoints/`."""
        return f"step_{self.step:06d}"


@dataclass
class MonitorStep:
    step: int
    run_dir: Path
    record: dict[str, Any] = field(default_factory=dict)  # its steps.jsonl line (train values, epoch ...)


@dataclass
class MonitorSource:
    """A training monitor's directory: monitor.json, steps.jsonl and one run dir per step."""

    path: Path
    monitor: dict[str, Any]
    steps: list[MonitorStep]


def _step_from_name(name: str) -> int | None:
    """The last integer in a name (`checkpoint-500`, `epoch=1-step=200.ckpt`, `step_000050`)."""
    match = re.search(r"step[=_-]?(\d+)", name)
    if match:
        return int(match.group(1))
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) if numbers else None


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def _hf_step(path: Path) -> int | None:
    state = path / TRAINER_STATE
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except (OSError, ValueError):
            step = None
        if isinstance(step, int):
            return step
    return _step_from_name(path.name)


def _hf_checkpoint(path: Path) -> tuple[Path, int | None, ModelInfo]:
    from .models.sources import describe_model

    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"checkpoint {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer "
            "beside the weights (tokenizer.save_pretrained, or pass the tokenizer to the Trainer)"
        )
    return path, _hf_step(path), describe_model(str(path))


# --- Lightning .ckpt ---------------------------------------------------------------------


def read_ckpt(path: Path) -> dict[str, Any]:
    """The .ckpt's contents via weights_only=True (memory-mapped when the file allows it)."""
    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap needs one
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"checkpoint {path} cannot be read with torch.load(weights_only=True): {first}; save plain tensors "
            "and values (the Lightning state_dict) instead of pickled objects"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(data).__name__}, not a dict with a state_dict")
    return data


def ckpt_state_dict(data: dict[str, Any], path: Path) -> dict[str, Any]:
    import torch

    state = data.get("state_dict", data)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {path} has no state_dict of tensors (a Lightning .ckpt keeps one)")
    return state


def _base_config(base_model: str):
    """The base model's HF config without loading weights (None: only known once it loads)."""
    from .models.sources import EMBEDDED, _hub_config, _tiny_config

    if base_model in EMBEDDED:
        return _tiny_config(base_model) if base_model.startswith("tiny_") else None
    return _hub_config(base_model)


def base_shapes(base_model: str) -> dict[str, tuple[int, ...]] | None:
    """Parameter name -> shape of the base model, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from .models.adapters import adapter_for

    config = _base_config(base_model)
    if config is None:
        return None
    loader = AutoModel if adapter_for(config.model_type).auto_class == "AutoModel" else AutoModelForCausalLM
    with torch.device("meta"):
        model = loader.from_config(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def match_prefix(keys: Sequence[str], expected: Sequence[str] | None) -> str:
    """The key prefix to strip: the shortest dotted common prefix after which the keys are `expected`.

    Without `expected` (a base model known only once loaded) the usual LightningModule
    attribute `model.` is stripped when every key has it and the rest still has a dotted name.
    """
    parts = [key.split(".") for key in keys]
    common: list[str] = []
    for segments in zip(*parts, strict=False):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    limit = min(len(common), min(len(p) for p in parts) - 1)  # never a whole key
    candidates = [".".join(common[:n]) + "." if n else "" for n in range(limit + 1)]
    if expected is None:
        return "model." if "model." in candidates else ""
    wanted = set(expected)
    best, overlap = "", -1
    for prefix in candidates:
        stripped = {key[len(prefix) :] for key in keys}
        if stripped == wanted:
            return prefix
        if len(stripped & wanted) > overlap:
            best, overlap = prefix, len(stripped & wanted)
    return best


def check_against_base(state: dict[str, Any], shapes: dict[str, tuple[int, ...]], prefix: str, path: Path) -> None:
    """The first key or shape that does not fit the base model, as one line."""
    stripped = {key[len(prefix) :]: tuple(value.shape) for key, value in state.items()}
    for key, shape in stripped.items():
        if key not in shapes:
            raise ConfigError(
                f"checkpoint {path}: tensor {prefix + key!r} has no counterpart in temporal.base_model "
                f"(stripped prefix {prefix!r}); set temporal.base_model to the model this checkpoint was trained from"
            )
        if shapes[key] != shape:
            raise ConfigError(
                f"checkpoint {path}: tensor {prefix + key!r} has shape {list(shape)} but temporal.base_model has "
                f"{list(shapes[key])}; set temporal.base_model to the model this checkpoint was trained from"
            )
    missing = [key for key in shapes if key not in stripped]
    if missing:
        raise ConfigError(
            f"checkpoint {path}: no tensor for {missing[0]!r} of temporal.base_model ({len(missing)} missing); "
            "set temporal.base_model to the model this checkpoint was trained from"
        )


def _lightning_checkpoint(path: Path, base_model: str | None, shapes: dict | None) -> Checkpoint:
    if not base_model:
        raise ConfigError(
            f"checkpoint {path} is a .ckpt without an HF config; set temporal.base_model=<embedded model name or "
            "HF folder> for its architecture and tokenizer"
        )
    from .models.sources import describe_model

    data = read_ckpt(path)
    state = ckpt_state_dict(data, path)
    prefix = match_prefix(list(state), None if shapes is None else list(shapes))
    if shapes is not None:
        check_against_base(state, shapes, prefix, path)
    step = data.get("global_step")
    if not isinstance(step, int):
        step = _step_from_name(path.name)
    info = replace(describe_model(base_model), name=str(path))
    return Checkpoint(path, step if step is not None else -1, "lightning", info, prefix)


# --- discovery ---------------------------------------------------------------------------


def _as_paths(source: Any) -> list[Path]:
    if source in (None, "", []):
        return []
    if isinstance(source, (str, Path)):
        text = str(source).strip()
        if text.startswith("[") and text.endswith("]"):
            source = [part.strip() for part in text[1:-1].split(",") if part.strip()]
        else:
            source = [text]
    if not isinstance(source, (list, tuple)) or not all(isinstance(s, (str, Path)) and str(s).strip() for s in source):
        raise ConfigError(
            f"checkpoints: expected a directory or a list of paths, e.g. checkpoints=runs/out or "
            f"checkpoints=[ckpt/a,ckpt/b]; got {source!r}"
        )
    return [Path(str(s).strip()).expanduser() for s in source]


def read_monitor(path: Path) -> MonitorSource:
    """monitor.json, steps.jsonl and the step run dirs that exist (a running monitor may lag)."""
    try:
        monitor = json.loads((path / MONITOR_FILE).read_text())
    except ValueError as err:
        raise ConfigError(f"{path / MONITOR_FILE} is not valid JSON ({err})") from None
    records: dict[int, dict] = {}
    steps_file = path / STEPS_FILE
    if steps_file.is_file():
        for number, line in enumerate(steps_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(steps_file.read_text().splitlines()):
                    continue  # the monitor is writing its last line right now
                raise ConfigError(f"{steps_file}: line {number} is not valid JSON") from None
            if isinstance(record.get("step"), int):
                records[record["step"]] = record
    steps = []
    for step in sorted(set(records) | {s for s in monitor.get("steps", []) if isinstance(s, int)}):
        record = records.get(step, {})
        run_dir = path / (record.get("run_dir") or f"step_{step:06d}")
        if (run_dir / "results.json").is_file():
            steps.append(MonitorStep(step, run_dir, record))
    if not steps:
        raise ConfigError(
            f"monitor directory {path} has no finished step yet (no step_*/results.json); wait for the first "
            "monitored step or check the path"
        )
    return MonitorSource(path, monitor, steps)


def _expand(path: Path) -> list[Path]:
    """A path -> the checkpoint paths it stands for (a folder of checkpoints or one checkpoint)."""
    if not path.exists():
        raise ConfigError(f"checkpoints: {path} does not exist")
    if path.is_file():
        if path.suffix != ".ckpt":
            raise ConfigError(f"checkpoints: {path} is a file but not a .ckpt; give an HF model folder or a .ckpt")
        return [path]
    if is_hf_folder(path):
        return [path]
    found = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and child.name.startswith("checkpoint-") and not is_hf_folder(child):
            raise ConfigError(
                f"checkpoints: {child} has no config.json with model weights ({', '.join(WEIGHT_FILES[::2])}); "
                "save it with save_pretrained or leave it out"
            )
        if is_hf_folder(child) or (child.is_file() and child.suffix == ".ckpt"):
            found.append(child)
    if not found:
        raise ConfigError(f"checkpoints: no checkpoints in {path} (looked for {LOOKED_FOR})")
    return found


def _describe(info: ModelInfo) -> str:
    return ", ".join(f"{label} {getattr(info, name)}" for name, label in ARCHITECTURE_FIELDS.items())


def check_same_architecture(checkpoints: Sequence[Checkpoint]) -> None:
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if any(getattr(first.info, f) != getattr(other.info, f) for f in ARCHITECTURE_FIELDS):
            raise ConfigError(
                f"checkpoints of different architectures: {first.path} ({_describe(first.info)}) and {other.path} "
                f"({_describe(other.info)}); run one training run's checkpoints at a time"
            )


def discover(source: Any, base_model: str | None = None) -> list[Checkpoint] | MonitorSource:
    """`checkpoints=<dir or list>` -> checkpoints sorted by step, or a monitor directory to read."""
    paths = _as_paths(source)
    if not paths:
        raise ConfigError("checkpoints: not set; give checkpoints=<directory> or checkpoints=[path,path,...]")
    monitors = [p for p in paths if p.is_dir() and (p / MONITOR_FILE).is_file()]
    if monitors:
        if len(paths) > 1:
            raise ConfigError(f"checkpoints: {monitors[0]} is a monitor directory; give it alone, not in a list")
        return read_monitor(monitors[0])
    expanded = [child for path in paths for child in _expand(path)]
    shapes = None
    if base_model and any(p.suffix == ".ckpt" for p in expanded):
        shapes = base_shapes(base_model)
    checkpoints = []
    for path in expanded:
        if path.suffix == ".ckpt" and path.is_file():
            checkpoints.append(_lightning_checkpoint(path, base_model, shapes))
        else:
            folder, step, info = _hf_checkpoint(path)
            checkpoints.append(Checkpoint(folder, step if step is not None else -1, "hf", info))
    check_same_architecture(checkpoints)
    unnumbered = [c for c in checkpoints if c.step < 0]
    if unnumbered and len(unnumbered) < len(checkpoints):
        raise ConfigError(
            f"checkpoints: {unnumbered[0].path} has no training step (no trainer_state.json global_step, "
            "no global_step in a .ckpt, no number in its name) while others have one; rename it, e.g. checkpoint-<step>"
        )
    if unnumbered:  # none has a step: the order given is the order of training
        for index, checkpoint in enumerate(checkpoints):
            checkpoint.step = index
    checkpoints.sort(key=lambda c: c.step)
    checkpoints = _drop_last_duplicates(checkpoints)
    for before, after in zip(checkpoints, checkpoints[1:], strict=False):
        if before.step == after.step:
            raise ConfigError(
                f"checkpoints: {before.path} and {after.path} are both step {before.step}; give only one of them"
            )
    return checkpoints


def _drop_last_duplicates(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Lightning's `last.ckpt` repeats the newest step's checkpoint: keep the named one."""
    steps = [c.step for c in checkpoints]
    return [c for c in checkpoints if not (c.path.name.startswith("last") and steps.count(c.step) > 1)]
