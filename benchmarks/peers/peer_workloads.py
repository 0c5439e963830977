"""What every cell of the peer benchmark shares: the model, the prompts, the answer tokens, the grids.

Each implementation module (`impl_*.py`) turns a `Problem` into one zero-argument callable per
workload that returns the workload's numbers as a tensor. Keeping the problem here means every
implementation sees exactly the same inputs, so the parent can compare their numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, TokenBatch, load_model

#: capture of all residual streams; the 270-head zero-ablation sweep; resid_pre patching grid;
#: integrated gradients at 50 steps; all attention patterns of one prompt; live SAE feature edits;
#: the head sweep split over 4 threads sharing one model
WORKLOADS = ("capture", "head_sweep", "patching", "ig", "attention", "sae", "concurrency")

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWERS = (" Mary", " John")
IG_STEPS = 50
#: the README's call (batch_size=32) is one interpsuite cell; this is the benchmark's best path
README_BATCH_SIZE = 32
BEST_BATCH_SIZE = 64
#: SAE workload: width = SAE_EXPANSION x d_model; edits per run (full, --quick)
SAE_EXPANSION = 8
SAE_EDITS = 32
SAE_EDITS_QUICK = 4
#: concurrency workload: Python threads sharing one model (the issue-9 figure)
N_THREADS = 4


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


@dataclass(frozen=True)
class SAESpec:
    """The SAE workload's one SAE (a ReLU "standard" SAE, SAELens parameter names and layout:
    W_enc [d_in, width], W_dec [width, d_in]) and its edits: edit i writes `values[i]` as
    feature `features[i]` at every position, the error term kept. Every sae cell builds its
    SAE object from these tensors, so all of them splice identical weights."""

    layer: int
    hook: str  # interpsuite's name of the spliced point: blocks.{layer}.resid_post
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    features: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU((x - b_dec) @ W_enc + b_enc): the maths both libraries use for a standard SAE."""
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def spliced(self, x: torch.Tensor, feature: int, value: float) -> torch.Tensor:
        """x with the SAE spliced in, `feature` set to `value` and the error term kept:
        decode(edited) + (x - decode(encode(x))), in x's dtype (what the plain and nnsight
        cells write back into the layer's output)."""
        acts = self.encode(x.float())
        edited = acts.clone()
        edited[..., feature] = value
        return (self.decode(edited) + (x.float() - self.decode(acts))).to(x.dtype)


def sae_spec(problem: Problem, seed: int = 0) -> SAESpec:
    """The SAE at the middle layer's resid_post, seeded, scaled to the clean prompt's activation
    there (computed once per cell process, untimed): encoder columns ~ N(0, 1/d_in), so
    pre-activations are about the activation's RMS; b_enc at minus half that RMS, so some
    features fire and some do not; decoder rows unit vectors. The edit values run up to twice the
    median token norm, so an edit moves the logits visibly."""
    if "sae_spec" in problem._twins:
        return problem._twins["sae_spec"]
    info = problem.model.info
    layer, width = info.n_layers // 2, SAE_EXPANSION * info.d_model
    hook = f"blocks.{layer}.resid_post"
    with torch.no_grad():
        activation = problem.model.forward(problem.clean, capture=[hook], logits_to_keep=1).cache[hook][0].float()
    rms = float(activation.pow(2).mean().sqrt())
    token_norm = float(activation.norm(dim=-1).median())
    generator = torch.Generator().manual_seed(seed)
    d_in = info.d_model
    w_enc = torch.randn(d_in, width, generator=generator) / d_in**0.5
    w_dec = torch.randn(width, d_in, generator=generator)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    b_enc = -0.5 * rms * (1 + 0.1 * torch.randn(width, generator=generator))
    b_dec = 0.1 * rms * torch.randn(d_in, generator=generator)
    n_edits = SAE_EDITS_QUICK if problem.quick else SAE_EDITS
    features = torch.randperm(width, generator=generator)[:n_edits].tolist()
    values = [2.0 * token_norm * (i + 1) / n_edits for i in range(n_edits)]
    device = problem.device
    spec = SAESpec(
        layer,
        hook,
        w_enc.to(device),
        b_enc.to(device),
        w_dec.to(device),
        b_dec.to(device),
        tuple(features),
        tuple(values),
    )
    problem._twins["sae_spec"] = spec
    return spec


def thread_slices(n_items: int, n_threads: int = N_THREADS) -> list[list[int]]:
    """Thread t's items: t, t + n_threads, ... (together every item exactly once)."""
    return [list(range(t, n_items, n_threads)) for t in range(n_threads)]


def run_threads(job: Callable[[list[int]], torch.Tensor], n_items: int, n_threads: int = N_THREADS) -> torch.Tensor:
    """Run `job(indices)` on every thread's slice at the same time (one pool per call, so no
    thread outlives the run) and put the numbers back in item order. A job that raises makes
    the whole run raise: a cell whose threads crash records the error."""
    slices = thread_slices(n_items, n_threads)
    with ThreadPoolExecutor(n_threads) as pool:
        parts = list(pool.map(job, slices))
    values = torch.empty(n_items)
    for indices, part in zip(slices, parts, strict=True):
        values[indices] = part.detach().float().cpu()
    return values
