"""Export a pruned model as a standard Hugging Face folder that reloads with transformers alone.

What is written depends on what a standard config can express:

* unstructured: the zeros are stored (saved inside `plan.apply`); the weights keep their shapes.
* neurons: when every layer prunes the same number of neurons, they are removed physically
  (gate/up rows, down columns; GPT-2 Conv1D transposed) and `intermediate_size` (GPT-2:
  `n_inner`) shrinks; otherwise the zeros are stored and the report says so.
* heads: transformers 5 no longer has `prune_heads`/`config.pruned_heads`, and GPT-2 and BERT
  derive the head size from hidden_size / n_heads, so their heads cannot be removed in a
  standard config: zeros are stored and the report says so. Llama-family models (Llama,
  Mistral, Qwen2: `head_dim` is a config field) are shrunk physically when every KV group of
  every layer loses the same number of query heads (so grouped-query attention still maps
  query head h to KV head h // group); otherwise zeros.

Memory: the masked weights are saved from the shared model in place (no copy); a physical
removal then loads that temporary save once (the one extra copy of the model, released
before the check), slices it and saves it again. The check reloads the final folder with the
Auto class and compares its outputs with the in-memory masked model's on a few texts.

The folder is built under a temporary name beside `path` and renamed into place, so `path`
never holds a half-written export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from interpsuite.errors import ConfigError

from .masks import head_columns, in_dim, is_conv1d, out_dim, unit_modules
from .plan import PruningPlan

if TYPE_CHECKING:
    from interpsuite.models.hooked import HookedModel

__all__ = ["EXPORT_TEXTS", "ExportReport", "export_pruned", "removal_plan"]

#: texts the round-trip check compares outputs on when the caller gives none
EXPORT_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights that matter least.",
    "When Mary and John went to the store, John gave a drink to",
    "1 2 3 4 5",
)
#: architectures whose config has an explicit head_dim and grouped-query heads we can slice
_GQA_SLICEABLE = ("llama", "mistral", "qwen2")


@dataclass
class ExportReport:
    """What `export_pruned` wrote and how faithfully: `physical` says whether units were removed."""

    path: str
    granularity: str
    criterion: str
    physical: bool
    notes: list[str]
    sparsity_per_module: dict[str, float]
    overall_sparsity: float
    config_changes: dict[str, Any]
    parameters_before: int
    parameters_after: int
    max_abs_logit_diff: float
    tolerance: float
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class _Removal:
    """How the structured units leave the model: which config fields change, or why they cannot."""

    physical: bool
    notes: list[str]
    config_changes: dict[str, Any]


def _uniform_count(plan: PruningPlan) -> int | None:
    counts = set(plan.counts().values())
    return counts.pop() if len(counts) == 1 else None


def removal_plan(model: HookedModel, plan: PruningPlan) -> _Removal:
    """Whether `plan`'s units can be removed physically from `model` in a standard config (and how)."""
    info, config = model.info, model.hf_model.config
    if plan.granularity == "unstructured":
        return _Removal(False, ["unstructured pruning: the zeros are stored; tensor shapes are unchanged"], {})
    count = _uniform_count(plan)
    if count == 0:
        return _Removal(False, [f"the plan prunes no {plan.granularity}; the weights are stored unchanged"], {})
    if plan.granularity == "neurons":
        field_name = "n_inner" if config.model_type == "gpt2" else "intermediate_size"
        if not hasattr(config, field_name):
            return _Removal(False, [f"{config.model_type} has no {field_name} in its config: zeros stored"], {})
        if count is None:
            return _Removal(
                False,
                [
                    f"layers prune different numbers of neurons {plan.counts()}; a standard config has one "
                    f"{field_name}, so zeros are stored (use scope='per_layer' for a physically smaller model)"
                ],
                {},
            )
        if count >= info.d_mlp:
            return _Removal(False, ["every neuron of every layer is pruned; zeros are stored"], {})
        return _Removal(True, [f"{count} neurons removed from every layer"], {field_name: info.d_mlp - count})
    # heads
    if config.model_type not in _GQA_SLICEABLE:
        return _Removal(
            False,
            [
                f"{config.model_type}: transformers 5 has no prune_heads and the config derives the head size from "
                f"hidden_size / n_heads, so heads cannot be removed in a standard config; zeros are stored"
            ],
            {},
        )
    group = info.n_heads // info.n_kv_heads
    per_group: set[int] = set()
    for layer in range(info.n_layers):
        pruned = plan.units.get(layer, [])
        per_group.update(sum(1 for h in pruned if h // group == g) for g in range(info.n_kv_heads))
    if len(per_group) != 1 or per_group == {group}:
        return _Removal(
            False,
            [
                "query heads can be removed from a grouped-query model only when every KV group of every layer loses "
                "the same number of them (and keeps at least one); zeros are stored"
            ],
            {},
        )
    lost = per_group.pop()
    new_heads = info.n_heads - lost * info.n_kv_heads
    return _Removal(
        True,
        [f"{lost * info.n_kv_heads} query heads removed from every layer ({lost} per KV group)"],
        {"num_attention_heads": new_heads, "head_dim": info.d_head},
    )


def _slice(module: nn.Module, keep: torch.Tensor, which: str) -> None:
    """Keep only the `keep` output ("out") or input ("in") features of a Linear or Conv1D."""
    dim = out_dim(module) if which == "out" else in_dim(module)
    weight = module.weight
    module.weight = nn.Parameter(weight.detach().index_select(dim, keep).clone(), requires_grad=weight.requires_grad)
    bias = getattr(module, "bias", None)
    if which == "out" and bias is not None:
        module.bias = nn.Parameter(bias.detach().index_select(0, keep).clone(), requires_grad=bias.requires_grad)
    size = int(keep.numel())
    if is_conv1d(module):
        setattr(module, "nf" if which == "out" else "nx", size)
    elif which == "out":
        module.out_features = size
    else:
        module.in_features = size


def _remove_units(model: HookedModel, plan: PruningPlan, fresh: nn.Module) -> None:
    """Slice `fresh` (a reload of the masked model) so the pruned units are gone."""
    info = model.info
    names = {id(module): name for name, module in model.hf_model.named_modules()}

    def twin(module: nn.Module) -> nn.Module:
        return fresh.get_submodule(names[id(module)])

    for layer in range(info.n_layers):
        pruned = set(plan.units.get(layer, []))
        if plan.granularity == "neurons":
            keep = torch.tensor([i for i in range(info.d_mlp) if i not in pruned], dtype=torch.long)
            writers, reader = unit_modules(model, layer)
            for module in writers:
                _slice(twin(module), keep, "out")
            _slice(twin(reader), keep, "in")
        else:
            kept_heads = [h for h in range(info.n_heads) if h not in pruned]
            keep = head_columns(kept_heads, info.d_head)
            attention = twin(model.adapter.attention_module(layer))
            _slice(attention.q_proj, keep, "out")
            _slice(twin(model.adapter.attention_output_projection(layer)), keep, "in")


def _outputs(hf_model: nn.Module, batch, is_causal: bool) -> torch.Tensor:
    with torch.no_grad():
        out = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if is_causal else out.last_hidden_state


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers draws a progress bar per save and load; an export inside a run reports through the core
    instead (the global switch is put back as it was)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _auto_class(model: HookedModel):
    import transformers

    return getattr(transformers, model.adapter.auto_class)


def export_pruned(
    model: HookedModel,
    plan: PruningPlan,
    path: str | Path,
    overwrite: bool = False,
    texts: list[str] | tuple[str, ...] | None = None,
    max_length: int = 64,
    tolerance: float = 1e-5,
) -> ExportReport:
    """Write the pruned model to `path` (a Hugging Face folder: config, safetensors, tokenizer).

    The report's `max_abs_logit_diff` compares the reloaded folder's outputs (logits; the last
    hidden state for encoders) with the in-memory masked model's on `texts` (real tokens only).
    """
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise ConfigError(f"export path {path} already exists; choose a new path or pass overwrite=True")
    plan.validate_for(model)
    removal = removal_plan(model, plan)
    texts = list(texts or EXPORT_TEXTS)
    batch = model.tokenize(texts, max_length)
    hf = model.hf_model
    dtype = next(hf.parameters()).dtype
    parameters_before = sum(p.numel() for p in hf.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.export-", dir=path.parent))
    with _quiet_transformers():
        try:
            staged = work / "masked"
            with plan.apply(model):
                reference = model.forward(batch).output.detach()
                hf.save_pretrained(staged)
            final = staged
            if removal.physical:
                fresh = type(hf).from_pretrained(staged, dtype=dtype)
                _remove_units(model, plan, fresh)
                for key, value in removal.config_changes.items():
                    setattr(fresh.config, key, value)
                final = work / "final"
                fresh.save_pretrained(final)
                del fresh
                shutil.rmtree(staged)
            model.tokenizer.save_pretrained(final)
            reloaded = _auto_class(model).from_pretrained(final, dtype=dtype).to(reference.device).eval()
            output = _outputs(reloaded, batch, model.info.is_causal)
            real = batch.attention_mask.bool()
            diff = float((output.float() - reference.float())[real].abs().max())
            parameters_after = sum(p.numel() for p in reloaded.parameters())
            del reloaded
            files = sorted(p.name for p in final.iterdir())
            _move_into_place(final, path, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    sparsity = plan.achieved_sparsity()
    return ExportReport(
        path=str(path),
        granularity=plan.granularity,
        criterion=plan.criterion,
        physical=removal.physical,
        notes=removal.notes,
        sparsity_per_module=sparsity.per_module,
        overall_sparsity=sparsity.overall,
        config_changes=removal.config_changes,
        parameters_before=parameters_before,
        parameters_after=parameters_after,
        max_abs_logit_diff=diff,
        tolerance=tolerance,
        files=files,
    )


def _move_into_place(final: Path, path: Path, work: Path) -> None:
    """Rename the finished folder to `path`; an existing `path` (overwrite) is moved aside first
    and put back if the rename fails."""
    previous = None
    if path.exists() or path.is_symlink():
        previous = work / "previous"
        os.replace(path, previous)
    try:
        os.replace(final, path)
    except OSError:
        if previous is not None:
            os.replace(previous, path)
        raise
