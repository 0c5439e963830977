"""Where a model's weights live and in what precision: one device, or a device map over several.

`resolve_placement` checks everything that can be checked without the model (device names,
dtype, `device_map` strategy, `max_memory` sizes) and returns a `Placement`. The loaders then
call `Placement.pretrained_kwargs` (checkpoints: the map is planned on a meta-device copy
built from the config, so a bad `max_memory` fails before any weight is read) or
`Placement.place` (models built in-process: dispatched with accelerate). Planning the map
ourselves, instead of handing the strategy string to transformers, means the map we
validated is exactly the map that is loaded.

Every mistake is a one-line `ConfigError` naming the problem and the fix, because a wrong
placement otherwise surfaces minutes later as an out-of-memory error or an accelerate
traceback deep inside `from_pretrained`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_ALIASES: dict[str, str] = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DISK = "disk"

DeviceKey = int | str  # accelerate's spelling: an int for an accelerator ordinal, else "cpu", "mps", "disk"
DeviceMap = dict[str, DeviceKey]


# Capturing `blocks.L.attn.pattern` switches layer L from fused SDPA to an explicit softmax(QK^T)V.
# Both compute the softmax in float32, but SDPA's blocked kernel accumulates in another order (a
# few float32 ulps per layer, amplified by the layers above), and in half precision the two paths
# round to the storage dtype at different points. Measured max|delta logit| / (eps(dtype) * max|logit|)
# over 5 text sets, pattern captured at layers 0, 1, 5, 15 and at every layer (CPU, torch 2.13):
#   SmolLM2 (30 layers)           float32 21.3   float16 6.4   bfloat16 5.7
#   every tiny_* model (2 layers) float32  3.9   float16 0.9   bfloat16 1.0
# The tolerance below leaves 3x headroom in float32 and 2.5x in half precision.
STORAGE_ULPS = 16
ACCUMULATION_ULPS = 48


def explicit_attention_tolerance(dtype: torch.dtype, logit_scale: float) -> float:
    """How far the explicit attention path may move outputs of scale `logit_scale` (max |logit|) in `dtype`.

    A rounding budget, not a fudge factor: a few ulps of the storage dtype plus a few float32 ulps
    for the softmax both paths accumulate in float32 (see the measured values above)."""
    return logit_scale * (STORAGE_ULPS * torch.finfo(dtype).eps + ACCUMULATION_ULPS * torch.finfo(torch.float32).eps)


# --- names ---------------------------------------------------------------------------------


def _supported() -> str:
    return ", ".join(SUPPORTED_DTYPES)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A supported floating dtype from its name (or a torch.dtype), else a ConfigError saying which exist.

    Only float32, float16 and bfloat16 are accepted: integer dtypes cannot hold trained weights
    (that needs a quantised checkpoint) and float64 has no fused attention kernels."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = DTYPE_ALIASES.get(dtype.strip().lower(), dtype.strip().lower())
    else:
        raise ConfigError(f"dtype={dtype!r} is not a dtype name; supported dtypes: {_supported()}")
    if name in SUPPORTED_DTYPES:
        return SUPPORTED_DTYPES[name]
    candidate = getattr(torch, name, None)
    if not isinstance(candidate, torch.dtype):
        raise ConfigError(f"dtype={dtype!r} is not a torch dtype; supported dtypes: {_supported()}")
    if not candidate.is_floating_point:
        raise ConfigError(
            f"dtype={dtype!r} is not a floating-point dtype (weights and activations must be floats; 8-bit weights "
            f"need a quantised checkpoint); supported dtypes: {_supported()}"
        )
    raise ConfigError(f"dtype={dtype!r} is not supported; supported dtypes: {_supported()}")


def available_devices() -> list[str]:
    """The devices this machine has, spelled as torch spells them ("cpu", "cuda:0", "mps", ...)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"xpu:{i}" for i in range(xpu.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _accelerator_type() -> str:
    """What a bare integer ordinal means here (accelerate numbers CUDA or XPU devices this way)."""
    xpu = getattr(torch, "xpu", None)
    if not torch.cuda.is_available() and xpu is not None and xpu.is_available():
        return "xpu"
    return "cuda"


def _devices_here() -> str:
    return ", ".join(available_devices())


def canonical_device(device: str | int | torch.device, what: str, allow_disk: bool = False) -> str:
    """A device spelled "cpu", "cuda:0", "mps" or (where allowed) "disk"; a ConfigError if this machine lacks it."""
    if isinstance(device, bool):
        raise ConfigError(f"{what}={device!r} is not a device; devices here: {_devices_here()}")
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if allow_disk and isinstance(device, str) and device.strip().lower() == DISK:
        return DISK
    try:
        parsed = torch.device(f"{_accelerator_type()}:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError, ValueError):
        extra = "; 'disk' offloads to offload_dir" if allow_disk else ""
        raise ConfigError(f"{what}={device!r} is not a device name; devices here: {_devices_here()}{extra}") from None
    if parsed.type in ("cpu", "mps"):
        name = parsed.type
    else:
        name = f"{parsed.type}:{parsed.index if parsed.index is not None else 0}"
    if name not in available_devices():
        extra = " ('disk' offloads to offload_dir)" if allow_disk else ""
        raise ConfigError(
            f"{what}={device!r} does not exist on this machine (devices here: {_devices_here()}){extra}; "
            f"use one of those"
        )
    return name


def _accelerate_key(device: str) -> DeviceKey:
    """accelerate's spelling of a canonical device: accelerator ordinals are plain ints."""
    if ":" in device:
        return int(device.split(":", 1)[1])
    return device


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(value: int | str, what: str = "max_memory") -> int:
    """Bytes from an int or a string such as "200MiB", "1.5GB" (powers of 10) or "8GiB" (powers of 2)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    raise ConfigError(
        f"{what}={value!r} is not a size; give bytes as a non-negative int or a string such as '200MiB', "
        f"'1.5GB' or '8GiB'"
    )


def format_bytes(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


# --- the placement --------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where and in what precision to load a model.

    Without `device_map` the whole model goes to `device`. With it, accelerate spreads the
    modules over devices (`max_memory` caps each one; what does not fit goes to the CPU, then
    to `disk` under `offload_dir`) and moves activations between them during the forward pass.
    Devices are stored in accelerate's spelling (int ordinals, "cpu", "mps", "disk").
    """

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    device_map: str | DeviceMap | None = None
    max_memory: dict[DeviceKey, int] | None = None
    offload_dir: Path | None = None

    @property
    def dispatched(self) -> bool:
        return self.device_map is not None

    # --- planning -----------------------------------------------------------------------
    def plan(self, model: nn.Module, name: str = "the model") -> DeviceMap:
        """The concrete module -> device map for `model` (real or on the meta device).

        Strategy strings are resolved the way transformers resolves them (balanced budgets for
        "auto"/"balanced", the raw budgets for "sequential"); a given dict is checked against the
        model's modules. Either way the map must leave one layer's room on some device and may
        send modules to disk only when there is an `offload_dir`."""
        from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

        if self.device_map is None:
            raise ConfigError("no device_map to plan: give device_map='auto' (or a dict module name -> device)")
        no_split = sorted(getattr(model, "_no_split_modules", None) or [])
        block, block_size = largest_block(model, self.dtype, no_split)
        if isinstance(self.device_map, dict):
            device_map = dict(self.device_map)
            _check_module_names(model, device_map, name)
        else:
            self._check_room_for_one_block(block, block_size, name)
            budgets = dict(self.max_memory) if self.max_memory is not None else None
            if self.device_map == "sequential":
                memory = get_max_memory(budgets)
            else:
                memory = get_balanced_memory(
                    model,
                    max_memory=budgets,
                    no_split_module_classes=no_split,
                    dtype=self.dtype,
                    low_zero=self.device_map == "balanced_low_0",
                )
            device_map = dict(
                infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=self.dtype)
            )
            if set(device_map.values()) == {DISK}:
                first, first_size = _first_module(model, self.dtype)
                raise ConfigError(
                    f"max_memory={self.describe_memory()} would put all of {name} on disk: its first module "
                    f"({first}) needs {format_bytes(first_size)} and accelerate keeps room for one {block} "
                    f"({format_bytes(block_size)}) beside it; raise max_memory to at least "
                    f"{format_bytes(first_size + block_size)} on one device"
                )
        on_disk = [module for module, device in device_map.items() if device == DISK]
        if on_disk and self.offload_dir is None:
            cause = f"max_memory={self.describe_memory()}" if isinstance(self.device_map, str) else "device_map"
            shown = ", ".join(on_disk[:3]) + (", ..." if len(on_disk) > 3 else "")
            raise ConfigError(
                f"{cause} sends {len(on_disk)} module(s) of {name} to disk ({shown}) but offload_dir is not set; "
                f"give offload_dir=<a folder for the offloaded weights> (or more max_memory)"
            )
        return device_map

    def _check_room_for_one_block(self, block: str, block_size: int, name: str) -> None:
        if self.max_memory is None:
            return
        compute = {device: size for device, size in self.max_memory.items() if device != DISK}
        if compute and max(compute.values()) >= block_size:
            return
        raise ConfigError(
            f"max_memory={self.describe_memory()} is too small to hold even one layer of {name}: one {block} needs "
            f"{format_bytes(block_size)} in {str(self.dtype).removeprefix('torch.')}; give at least that much to "
            f"one device (e.g. max_memory={{'cpu': '{max(1, -(-block_size // 2**20))}MiB'}} or more)"
        )

    def describe_memory(self) -> str:
        if self.max_memory is None:
            return "None"
        return "{" + ", ".join(f"{device!r}: '{format_bytes(size)}'" for device, size in self.max_memory.items()) + "}"

    # --- applying -----------------------------------------------------------------------
    def pretrained_kwargs(self, model_class, config, name: str) -> dict:
        """Keyword arguments for `model_class.from_pretrained` (dtype included).

        The device map is planned on a meta-device copy built from `config`, so every placement
        error is raised before a weight is read."""
        kwargs: dict = {"dtype": self.dtype}
        if not self.dispatched:
            return kwargs
        from accelerate import init_empty_weights

        build = getattr(model_class, "from_config", None) or model_class._from_config  # Auto* or a concrete class
        with init_empty_weights():
            empty = build(config, dtype=self.dtype)
        empty.tie_weights()  # tied weights count once and stay on one device, as in the loaded model
        kwargs["device_map"] = self.plan(empty, name)
        if self.max_memory is not None:
            kwargs["max_memory"] = dict(self.max_memory)
        if self.offload_dir is not None:
            kwargs["offload_folder"] = str(self.offload_dir)
        return kwargs

    def place(self, model: nn.Module, name: str = "the model") -> nn.Module:
        """Put a model that already holds its weights (built in-process) where the placement says.

        Disk-offloaded weights are written to a fresh folder under `offload_dir`: accelerate reuses
        any `index.json` it finds there, which would silently read another model's weights."""
        model = model.to(self.dtype)
        if not self.dispatched:
            return model.to(self.device).eval()
        from accelerate import dispatch_model

        device_map = self.plan(model, name)
        offload = None
        if DISK in device_map.values() and self.offload_dir is not None:
            self.offload_dir.mkdir(parents=True, exist_ok=True)
            offload = tempfile.mkdtemp(prefix=f"{name}-", dir=self.offload_dir)
        model = dispatch_model(model, device_map=device_map, offload_dir=offload)
        model.hf_device_map = dict(device_map)
        return model.eval()

    def finish(self, model: nn.Module) -> nn.Module:
        """After `from_pretrained(**pretrained_kwargs(...))`: a model without a device map still has to move."""
        if not self.dispatched:
            model = model.to(self.device)
        return model.eval()


def resolve_placement(
    device: str | int | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    device_map: str | Mapping | None = None,
    max_memory: Mapping | None = None,
    offload_dir: str | Path | None = None,
) -> Placement:
    """Validate a placement without touching the model (so a typo fails in milliseconds)."""
    torch_dtype = resolve_dtype(dtype)
    if device_map is None:
        for given, option in ((max_memory, "max_memory"), (offload_dir, "offload_dir")):
            if given is not None:
                raise ConfigError(
                    f"{option} only applies with a device_map; add device_map='auto' (or a dict module name -> device)"
                )
        return Placement(device=canonical_device(device, "device"), dtype=torch_dtype)
    if canonical_device(device, "device") != "cpu":
        raise ConfigError(
            f"give either device={device!r} (the whole model on one device) or device_map={device_map!r}, not both; "
            f"with a device_map, list {device!r} in it or in max_memory"
        )
    resolved_map: str | DeviceMap
    if isinstance(device_map, str):
        if device_map not in STRATEGIES:
            try:
                canonical_device(device_map, "device_map")
                is_device = True
            except ConfigError:
                is_device = False
            if is_device:
                raise ConfigError(
                    f"device_map={device_map!r} names a device: use device={device_map!r} to put the whole model "
                    f"there, or device_map='auto' to spread it over devices"
                )
            raise ConfigError(
                f"device_map={device_map!r} is not a placement strategy; use one of "
                f"{', '.join(repr(s) for s in STRATEGIES)}, or a dict module name -> device ('cpu', 'disk', 'cuda:0')"
            )
        resolved_map = device_map
    elif isinstance(device_map, Mapping):
        if not device_map:
            raise ConfigError("device_map is an empty dict; give {'': 'cpu'} or module name -> device entries")
        resolved_map = {
            str(module): _accelerate_key(canonical_device(target, f"device_map[{module!r}]", allow_disk=True))
            for module, target in device_map.items()
        }
    else:
        raise ConfigError(
            f"device_map={device_map!r} is neither a strategy ({', '.join(STRATEGIES)}) nor a dict "
            f"module name -> device"
        )
    budgets = None
    if max_memory is not None:
        if not isinstance(max_memory, Mapping) or not max_memory:
            raise ConfigError(
                f"max_memory={max_memory!r} is not a dict device -> size; give e.g. max_memory={{'cpu': '2GiB'}}"
            )
        if isinstance(resolved_map, dict):
            raise ConfigError(
                "max_memory only applies to a device_map strategy ('auto', 'sequential', ...); a dict device_map "
                "already says where every module goes: drop max_memory or use device_map='auto'"
            )
        budgets = {
            _accelerate_key(canonical_device(key, "max_memory key", allow_disk=True)): parse_memory(
                value, f"max_memory[{key!r}]"
            )
            for key, value in max_memory.items()
        }
    return Placement(
        device="cpu",
        dtype=torch_dtype,
        device_map=resolved_map,
        max_memory=budgets,
        offload_dir=Path(offload_dir).expanduser() if offload_dir is not None else None,
    )


# --- sizes ------------------------------------------------------------------------------------


def largest_block(model: nn.Module, dtype: torch.dtype, no_split: list[str]) -> tuple[str, int]:
    """(class name, bytes) of the largest module that accelerate never splits (a transformer layer).

    Works on a meta-device model: only shapes are read. Models that declare no such classes
    fall back to their largest leaf module."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, dtype=dtype)
    best = ("module", 0)
    for module_name, module in model.named_modules():
        if no_split and type(module).__name__ not in no_split:
            continue
        if not no_split and any(True for _ in module.children()):
            continue
        size = sizes.get(module_name, 0)
        if size > best[1]:
            best = (type(module).__name__, size)
    return best


def _first_module(model: nn.Module, dtype: torch.dtype) -> tuple[str, int]:
    """The first module with weights, in the order accelerate places modules (the embedding, usually)."""
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, dtype=dtype)
    for module_name, module in model.named_modules():
        if module_name and any(True for _ in module.parameters(recurse=False)):
            return module_name, sizes.get(module_name, 0)
    return "", sizes.get("", 0)


def _check_module_names(model: nn.Module, device_map: DeviceMap, name: str) -> None:
    """Every key names a module (or parameter) of the model, and every weight is covered by some key."""
    known = {module_name for module_name, _ in model.named_modules()}
    known |= {tensor_name for tensor_name, _ in model.state_dict().items()}
    unknown = [module for module in device_map if module not in known]
    top = ", ".join(child for child, _ in model.named_children())
    if unknown:
        raise ConfigError(
            f"device_map names {unknown[0]!r}, which is not a module of {name} (top-level modules: {top}); "
            f"use module names as in model.named_modules(), or '' for the whole model"
        )
    if "" in device_map:
        return
    uncovered = [
        tensor_name
        for tensor_name in model.state_dict()
        if not any(tensor_name == key or tensor_name.startswith(key + ".") for key in device_map)
    ]
    if uncovered:
        shown = ", ".join(uncovered[:3]) + (", ..." if len(uncovered) > 3 else "")
        raise ConfigError(
            f"device_map places no device for {len(uncovered)} weight(s) of {name} ({shown}); add their modules "
            f"(top-level modules: {top}), or '' for everything not listed"
        )
