"""Refusal direction engine, after Arditi et al. 2024, "Refusal in language models is mediated by a single direction".

A plain Python API (no pipeline needed); the `refusal_direction` analyzer is a thin layer over it.

* Requests are formatted with the model's chat template (`apply_chat_template`,
  `add_generation_prompt=True`), so the last tokens of every prompt are the template's
  post-instruction tokens (SmolLM2: `<|im_end|> \\n <|im_start|> assistant \\n`). A model
  without a template reads the request as plain text, and `format_prompts` says so.
* Refusal is detected by phrase matching (`RefusalMatcher`): a generation refuses when one of
  the phrases occurs in its first `max_chars` characters, case-insensitively (curly
  apostrophes count as straight ones). The phrase list is configurable.
* The candidate directions are differences of means, decline minus harmless, of the residual
  stream at every candidate layer and post-instruction position (-1 = the last prompt token),
  from ONE capture pass per batch for all layers (`mean_activations`).
* The refusal score is the log-odds, at the first generated position, of the refusal-start
  tokens: log p(R) - log(1 - p(R)) with p(R) the summed probability of the tokens
  (Arditi et al. use "I" for Llama and Gemma chats). It is cheap (one forward, no generation),
  so every candidate is scored with the batched sweep engine (`model.sweep`): its directional
  ablation on validation decline and harmless prompts (the refusal score on the first, the KL
  divergence from the clean next-token distribution on the second: an ablation that breaks
  the model also lowers any score) and its addition on validation harmless prompts.
* Directional ablation projects the direction out of the residual stream entering every layer
  AND out of every attention and MLP output, so no component can write it back
  (`ablation_interventions`). Activation addition adds the (unnormalised) mean difference at the
  chosen layer, at every position (`addition_interventions`).
* `generation.generate` is greedy decoding under a list of interventions per condition, batched over
  prompts and conditions (each condition's interventions apply to its own rows): Hugging
  Face `generate` with the key/value cache runs inside `HookedModel.hooks`. Every
  intervention used here acts on each position independently (no position lists), so
  cached decoding is exact; `greedy_reference` (a full forward per token, no cache) is the
  check of that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from interpsuite.data import json_lines
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, ModelInfo, TokenBatch

DATA_DIR = Path(__file__).parent / "data"
DECLINE_FILE = DATA_DIR / "decline.jsonl"
HARMLESS_FILE = DATA_DIR / "harmless.jsonl"
SPLITS = ("train", "val", "test")
#: where a candidate direction is read: the residual stream entering (resid_pre) or leaving (resid_post) a block
SITES = ("resid_pre", "resid_post")
#: per-block outputs that write into the residual stream; ablation removes the direction from each
WRITERS = ("attn.out", "mlp.out")
#: Arditi et al.'s substring list, plus common openings of small chat models ("Sorry", "Unfortunately, I")
DEFAULT_PHRASES: tuple[str, ...] = (
    "I'm sorry",
    "I am sorry",
    "I apologize",
    "I apologise",
    "Sorry",
    "As an AI",
    "As a language model",
    "As an assistant",
    "I cannot",
    "I can't",
    "I can not",
    "I am unable",
    "I'm unable",
    "I am not able",
    "I'm not able",
    "I will not",
    "I won't",
    "Unfortunately, I",
)
#: first tokens of refusals that are not also ordinary answer openings (see docs: "I" is not, on SmolLM2)
DEFAULT_REFUSAL_TOKENS: tuple[str, ...] = ("Sorry", "Unfortunately")


# --- refusal phrases ----------------------------------------------------------------------
@dataclass(frozen=True)
class RefusalMatcher:
    """Phrase matching: `match(text)` is the first phrase found in text[:max_chars] (case-insensitive)."""

    phrases: tuple[str, ...] = DEFAULT_PHRASES
    max_chars: int = 60

    def __post_init__(self) -> None:
        if not self.phrases or any(not isinstance(p, str) or not p.strip() for p in self.phrases):
            raise ConfigError(
                f"refusal phrases must be a non-empty list of non-empty strings (got {list(self.phrases)}); "
                "give e.g. [\"I'm sorry\", 'I cannot']"
            )
        if self.max_chars < 1:
            raise ConfigError(f"refusal match_chars must be >= 1, got {self.max_chars}")

    @staticmethod
    def normalise(text: str) -> str:
        return text.replace("\u2019", "'").replace("\u2018", "'").casefold()

    def match(self, text: str) -> str | None:
        head = self.normalise(text[: self.max_chars])
        for phrase in self.phrases:
            if self.normalise(phrase) in head:
                return phrase
        return None

    def refuses(self, text: str) -> bool:
        return self.match(text) is not None


# --- request sets --------------------------------------------------------------------------
@dataclass
class RequestSet:
    """Requests with a split each (train: the direction; val: choosing it; test: reporting)."""

    name: str
    texts: list[str]
    splits: list[str]
    source: str

    def part(self, split: str, limit: int | None = None) -> list[str]:
        chosen = [t for t, s in zip(self.texts, self.splits, strict=True) if s == split]
        return chosen if limit is None else chosen[:limit]


def read_requests(path: str | Path, name: str, text_field: str = "text", split_field: str = "split") -> RequestSet:
    """A .jsonl of requests, each with a text and a split (train | val | test), every split present."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name} set {str(path)!r} does not exist or is not a file; give a .jsonl path or null")
    if path.suffix.lower() != ".jsonl":
        raise ConfigError(f"{name} set {path.name!r}: unsupported file type; use .jsonl with one JSON object a line")
    rows = json_lines(path.read_text(encoding="utf-8-sig"), path.name)
    if not rows:
        raise ConfigError(f"{name} set {path.name!r} has no records; give at least one request per split")
    texts, splits = [], []
    for where, record in rows:
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: each line must be a JSON object with fields {text_field!r}, {split_field!r}")
        for field_name, option in ((text_field, "text_field"), (split_field, "split_field")):
            value = record.get(field_name)
            if not isinstance(value, str) or not value.strip():
                fields = ", ".join(sorted(record)) or "(none)"
                raise ConfigError(f"{where}: no text field {field_name!r} (fields: {fields}); set {option}=<field>")
        if record[split_field] not in SPLITS:
            raise ConfigError(f"{where}: split {record[split_field]!r} is not one of {', '.join(SPLITS)}")
        texts.append(record[text_field])
        splits.append(record[split_field])
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ConfigError(
            f"{name} set {path.name!r} has no {'/'.join(missing)} requests; every split (train: direction, val: "
            "choice of layer and position, test: refusal rates) needs at least one"
        )
    return RequestSet(name, texts, splits, str(path))


def format_prompts(tokenizer, requests: Sequence[str], system_prompt: str | None = None) -> tuple[list[str], str]:
    """Requests in the model's chat template with the generation prompt; (prompts, note).

    `system_prompt` None keeps the template's own default (SmolLM2's template adds one).
    Without a chat template the requests are used as they are and the note says so."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return list(requests), "the tokenizer has no chat template: requests are read as plain text"
    prompts = []
    for request in requests:
        messages = [{"role": "user", "content": request}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return prompts, "formatted with the model's chat template (add_generation_prompt=True)"


# --- refusal score ----------------------------------------------------------------------------
def refusal_token_ids(model: HookedModel, tokens: Sequence[str]) -> tuple[list[int], list[str]]:
    """Ids of the refusal-start tokens (a word split by the tokenizer gives its first piece; noted)."""
    if not tokens:
        raise ConfigError("refusal_tokens is empty; give the first tokens of refusals, e.g. ['Sorry', 'I']")
    ids: list[int] = []
    notes: list[str] = []
    for token in tokens:
        token_id, note = model.token_id(token, "refusal token", allow_first_piece=True)
        if note and "pieces" in note:
            notes.append(note)
        if token_id not in ids:
            ids.append(token_id)
    return ids, notes


def refusal_score(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log p(R) - log(1 - p(R)) per row of next-token logits [..., V]; R = the refusal tokens."""
    logp = logits.float().log_softmax(-1)
    log_r = logp.index_select(-1, token_ids.to(logp.device)).logsumexp(-1)
    log_rest = torch.log(-torch.expm1(log_r.clamp(max=-1e-7)))
    return log_r - log_rest


def score_metric(token_ids: torch.Tensor, base: TokenBatch) -> Callable[[torch.Tensor, TokenBatch], torch.Tensor]:
    """A sweep metric: each row's refusal score at its last prompt token."""
    _, column = base.last_positions()

    def metric(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
        k = output.shape[0] // base.size
        rows = torch.arange(output.shape[0], device=output.device)
        logits = output[rows, column.repeat(k).to(output.device)]
        return refusal_score(logits, token_ids)

    return metric


def forward_scores(
    model: HookedModel, batch: TokenBatch, token_ids: torch.Tensor, interventions: Sequence[Intervention] = ()
) -> torch.Tensor:
    """Refusal score per row from one plain forward (the reference the sweep is checked against)."""
    keep, column = batch.last_positions()
    with torch.no_grad():
        out = model.forward(batch, interventions=list(interventions), logits_to_keep=keep).output
    rows = torch.arange(batch.size, device=out.device)
    return refusal_score(out[rows, column.to(out.device)], token_ids)


# --- directions --------------------------------------------------------------------------------
def check_positions(positions: Sequence[int], what: str = "refusal_direction.positions") -> list[int]:
    """Post-instruction positions: distinct negative ints (-1 = the last prompt token)."""
    if not positions:
        raise ConfigError(f"{what}: empty; give negative positions from the prompt end, e.g. [-1, -2, -3]")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or p >= 0:
            raise ConfigError(f"{what}: {p!r} is not a negative int; positions count from the prompt end (-1 = last)")
        if p in out:
            raise ConfigError(f"{what}: position {p} is listed twice")
        out.append(p)
    return out


def default_layers(info: ModelInfo, exclude_last_fraction: float = 0.2) -> list[int]:
    """Candidate layers: all but the last `exclude_last_fraction` of the depth (Arditi et al. exclude
    the last 20%: a direction read there is too close to the output to mediate anything upstream)."""
    keep = max(1, int(math.floor(info.n_layers * (1.0 - exclude_last_fraction))))
    return list(range(keep))


def mean_activations(
    model: HookedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    positions: Sequence[int],
    site: str = "resid_pre",
    batch_size: int = 8,
    max_length: int | None = None,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> torch.Tensor:
    """Mean activation at `blocks.{l}.{site}` for every layer and position from the prompt end:
    [L, P, d] float64, from ONE forward pass per batch capturing every layer."""
    hooks = [f"blocks.{layer}.{site}" for layer in layers]
    offsets = torch.tensor([-p - 1 for p in positions])  # -1 -> 0 tokens before the last
    total: torch.Tensor | None = None
    batches = model.batches(list(prompts), batch_size, max_length)
    for batch in progress(batches, "refusal capture") if progress else batches:
        if int(batch.lengths.min()) < max(-p for p in positions):
            raise ConfigError(
                f"refusal_direction: a prompt has {int(batch.lengths.min())} tokens, fewer than the positions "
                f"{list(positions)} need; use fewer/closer positions or longer prompts"
            )
        with torch.no_grad():
            cache = model.forward(batch, capture=hooks, logits_to_keep=1).cache
        index = (batch.last_index.cpu()[:, None] - offsets[None, :]).to(model.device)  # [B, P]
        rows = torch.arange(batch.size, device=model.device)[:, None]
        stacked = torch.stack([cache[h][rows, index].double().sum(0) for h in hooks])  # [L, P, d]
        total = stacked if total is None else total + stacked
    assert total is not None
    return total / len(prompts)


def candidate_directions(
    model: HookedModel,
    decline: Sequence[str],
    harmless: Sequence[str],
    layers: Sequence[int],
    positions: Sequence[int],
    site: str = "resid_pre",
    batch_size: int = 8,
    max_length: int | None = None,
    progress=None,
) -> torch.Tensor:
    """mean(decline) - mean(harmless) per layer and position: [L, P, d] float64."""
    pos = mean_activations(model, decline, layers, positions, site, batch_size, max_length, progress)
    neg = mean_activations(model, harmless, layers, positions, site, batch_size, max_length, progress)
    return pos - neg


def random_like(direction: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded Gaussian direction with exactly the norm of `direction` (the control)."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(direction.shape, generator=generator, dtype=torch.float64)
    return (noise / noise.norm() * direction.double().cpu().norm()).to(direction.dtype).to(direction.device)


# --- interventions --------------------------------------------------------------------------------
def ablation_interventions(info: ModelInfo, direction: torch.Tensor) -> list[Intervention]:
    """Project the direction out of the residual stream entering every layer and out of every
    attention and MLP output (so nothing writes it back): Arditi et al.'s directional ablation."""
    value = direction.float()
    out = []
    for layer in range(info.n_layers):
        out.append(Intervention(f"blocks.{layer}.resid_pre", "project_out", value=value))
        out.extend(Intervention(f"blocks.{layer}.{site}", "project_out", value=value) for site in WRITERS)
    return out


def addition_interventions(
    layer: int, site: str, direction: torch.Tensor, coefficient: float = 1.0
) -> list[Intervention]:
    """Add coefficient x the direction at `blocks.{layer}.{site}`, every position."""
    return [Intervention(f"blocks.{layer}.{site}", "add", value=(coefficient * direction).float())]


@dataclass
class CandidateScores:
    """Validation numbers of every candidate, each [L, P] (mean over prompts)."""

    ablated: torch.Tensor  # refusal score on decline prompts, direction ablated
    added: torch.Tensor  # refusal score on harmless prompts, direction added
    kl: torch.Tensor  # KL(clean || ablated) of the next-token distribution on harmless prompts


def ablation_metric(token_ids: torch.Tensor, base: TokenBatch, clean_logp: torch.Tensor):
    """A sweep metric: [rows, 2] = (refusal score, KL(clean || intervened) at the last prompt token)."""
    _, column = base.last_positions()

    def metric(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
        k = output.shape[0] // base.size
        rows = torch.arange(output.shape[0], device=output.device)
        logits = output[rows, column.repeat(k).to(output.device)].float()
        clean = clean_logp.repeat(k, 1).to(output.device)
        kl = (clean.exp() * (clean - logits.log_softmax(-1))).sum(-1)
        return torch.stack([refusal_score(logits, token_ids), kl], dim=1)

    return metric


def last_logp(model: HookedModel, batch: TokenBatch, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """[B, V] next-token log-probabilities at each row's last token (float32)."""
    keep, column = batch.last_positions()
    with torch.no_grad():
        out = model.forward(batch, interventions=list(interventions), logits_to_keep=keep).output
    rows = torch.arange(batch.size, device=out.device)
    return out[rows, column.to(out.device)].float().log_softmax(-1)


def score_candidates(
    model: HookedModel,
    directions: torch.Tensor,
    layers: Sequence[int],
    site: str,
    decline: Sequence[str],
    harmless: Sequence[str],
    token_ids: torch.Tensor,
    coefficient: float = 1.0,
    batch_size: int = 64,
    progress=None,
) -> CandidateScores:
    """Every candidate [L, P] on the validation prompts, as two `model.sweep` calls with one item
    per candidate (not a forward each): ablation over decline + harmless prompts together
    (refusal score on the decline rows, KL from the clean distribution on the harmless rows),
    and addition at the candidate's layer over the harmless prompts."""
    n_layers, n_positions = directions.shape[:2]
    keys = [(i, j) for i in range(n_layers) for j in range(n_positions)]
    ablate = [ablation_interventions(model.info, directions[i, j].to(model.device)) for i, j in keys]
    add = [addition_interventions(layers[i], site, directions[i, j].to(model.device), coefficient) for i, j in keys]
    extra = {"progress": progress} if progress is not None else {}
    both = model.tokenize([*decline, *harmless])
    harmless_batch = model.tokenize(list(harmless))
    n_decline = len(decline)
    with torch.no_grad():
        ablated = model.sweep(
            both,
            ablate,
            ablation_metric(token_ids, both, last_logp(model, both)),
            batch_size=max(batch_size, both.size),
            logits_to_keep=both.last_positions()[0],
            **extra,
        ).double()  # [items, rows, 2]
        added = model.sweep(
            harmless_batch,
            add,
            score_metric(token_ids, harmless_batch),
            batch_size=max(batch_size, harmless_batch.size),
            logits_to_keep=harmless_batch.last_positions()[0],
            **extra,
        ).double()
    shape = (n_layers, n_positions)
    return CandidateScores(
        ablated[:, :n_decline, 0].mean(1).reshape(shape).cpu(),
        added.mean(1).reshape(shape).cpu(),
        ablated[:, n_decline:, 1].mean(1).reshape(shape).cpu(),
    )


# --- generation ----------------------------------------------------------------------------------
def greedy_reference(
    model: HookedModel, prompt: str, interventions: Sequence[Intervention], max_new_tokens: int
) -> list[int]:
    """Greedy continuation of one prompt by a full forward per token (no cache): the check of `generate`."""
    ids = model.tokenize([prompt]).input_ids
    eos = model.tokenizer.eos_token_id
    new: list[int] = []
    for _ in range(max_new_tokens):
        batch = TokenBatch(ids, torch.ones_like(ids), [[]], [0])
        with torch.no_grad():
            out = model.forward(batch, interventions=list(interventions), logits_to_keep=1).output
        token = int(out[0, -1].argmax())
        if eos is not None and token == eos:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return new
