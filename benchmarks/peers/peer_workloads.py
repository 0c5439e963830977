"""What every cell of the peer benchmark shares: the model, the prompts, the answer tokens, the grids.

Each implementation module (`impl_*.py`) turns a `Problem` into one zero-argument callable per
workload that returns the workload's numbers as a tensor. Keeping the problem here means every
implementation sees exactly the same inputs, so the parent can compare their numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, TokenBatch, load_model

#: capture of all residual streams; the 270-head zero-ablation sweep; resid_pre patching grid;
#: integrated gradients at 50 steps; all attention patterns of one prompt
WORKLOADS = ("capture", "head_sweep", "patching", "ig", "attention")

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWERS = (" Mary", " John")
IG_STEPS = 50
#: the README's call (batch_size=32) is one interpsuite cell; this is the benchmark's best path
README_BATCH_SIZE = 32
BEST_BATCH_SIZE = 64


@dataclass
class Problem:
    """The inputs of every workload, built once per cell process."""

    model: HookedModel
    device: torch.device
    quick: bool
    clean: TokenBatch
    corrupted: TokenBatch
    answers: tuple[int, int]  # (good, bad) token ids: the metric is logit(good) - logit(bad) at the last token
    capture_ids: torch.Tensor  # [B, T] random tokens for the capture workload
    head_layers: list[int]
    patch_layers: list[int]
    _twins: dict[str, Any] = field(default_factory=dict)  # unwrapped copies and peer wrappers, by kind

    @property
    def n_layers(self) -> int:
        return self.model.info.n_layers

    @property
    def heads(self) -> list[tuple[int, int]]:
        """(layer, head) in layer order: the order every head-sweep cell reports in."""
        return [(layer, head) for layer in self.head_layers for head in range(self.model.info.n_heads)]

    @property
    def width(self) -> int:
        return int(self.corrupted.input_ids.shape[1])

    def twin(self, attention: str) -> nn.Module:
        """An unwrapped copy of the model (same weights, stock transformers, `attention` kernel),
        so plain-PyTorch and peer cells run no interpsuite code at all."""
        if attention not in self._twins:
            hf = self.model.hf_model
            config = hf.config.__class__.from_dict(hf.config.to_dict())
            config._attn_implementation = attention
            twin = type(hf)(config).eval()
            twin.load_state_dict(hf.state_dict())
            self._twins[attention] = twin.to(self.device)
        return self._twins[attention]


def answer_ids(model: HookedModel) -> tuple[int, int]:
    """The first token where " Mary" and " John" differ (their only token in SmolLM2's tokenizer;
    tiny byte-level test models split both into pieces that share a leading space)."""
    good, bad = (model.tokenizer(text, add_special_tokens=False).input_ids for text in ANSWERS)
    for a, b in zip(good, bad, strict=False):
        if a != b:
            return int(a), int(b)
    raise ConfigError(f"the answers {ANSWERS} tokenize identically for {model.info.name}; use another model")


def quick_layers(n_layers: int, quick: bool) -> list[int]:
    """Every layer, or in a quick run the first, middle and last (all of them in a tiny model)."""
    return sorted({0, n_layers // 2, n_layers - 1}) if quick else list(range(n_layers))


def build_problem(model_name: str, device: str, quick: bool, seed: int = 0) -> Problem:
    """Load the model and tokenize everything the workloads need."""
    model = load_model(model_name, device=device)
    clean, corrupted = model.tokenize([CLEAN]), model.tokenize([CORRUPTED])
    if clean.input_ids.shape != corrupted.input_ids.shape:
        raise ConfigError(
            f"{model_name}: the clean and corrupted prompts tokenize to different lengths; use another model"
        )
    batch, seq = (2, 32) if quick else (16, 64)
    generator = torch.Generator().manual_seed(seed)
    capture_ids = torch.randint(0, model.info.vocab_size, (batch, seq), generator=generator)
    layers = quick_layers(model.info.n_layers, quick)
    return Problem(
        model=model,
        device=torch.device(device),
        quick=quick,
        clean=to_device(clean, device),
        corrupted=to_device(corrupted, device),
        answers=answer_ids(model),
        capture_ids=capture_ids.to(device),
        head_layers=layers,
        patch_layers=layers,
    )


def to_device(batch: TokenBatch, device: str) -> TokenBatch:
    return TokenBatch(
        batch.input_ids.to(device), batch.attention_mask.to(device), tokens=batch.tokens, text_ids=batch.text_ids
    )


def capture_batch(problem: Problem) -> TokenBatch:
    ids = problem.capture_ids
    return TokenBatch(ids, torch.ones_like(ids), tokens=[[]] * ids.shape[0], text_ids=list(range(ids.shape[0])))


def hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder layer's hidden state, whether the layer returns a tensor or a tuple."""
    return output[0] if isinstance(output, tuple) else output


def last_logit_diff(logits: torch.Tensor, answers: tuple[int, int]) -> torch.Tensor:
    """[rows] logit(good) - logit(bad) at the last position."""
    return logits[:, -1, answers[0]] - logits[:, -1, answers[1]]


def embeddings(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean prompt's float32 input embeddings and IG's baseline (`pad_keep_first`: the pad
    token's embedding everywhere but the first position), shared by both IG cells."""
    ids = problem.clean.input_ids
    table = problem.model.hf_model.get_input_embeddings()
    tokenizer = problem.model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    with torch.no_grad():
        embeds = table(ids).detach().float()
        base = table(torch.full_like(ids, int(pad))).detach().float()
    base[:, 0] = embeds[:, 0]
    return embeds, base


@dataclass
class Cell:
    """One workload as one implementation runs it: `run()` returns the numbers the parent compares."""

    run: Callable[[], torch.Tensor]
    attention: str  # the attention kernel the cell runs: "eager", "sdpa", "interpsuite_sdpa", ...
    note: str = ""


Builder = Callable[[Problem], Cell]
