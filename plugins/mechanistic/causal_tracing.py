"""causal_tracing: where a model recalls a fact (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", the causal trace of ROME).

For each factual prompt ("The Eiffel Tower is located in the city of" -> " Paris", subject "The
Eiffel Tower") three runs are compared on the probability p of the answer token at the last
position:

- clean: the prompt as is; every hidden state is stored;
- corrupted: Gaussian noise N(0, (noise_scale * sigma)^2) is added to the input embeddings
  (`embed`) of the subject tokens, so the model no longer knows what the subject is;
- restored: the corrupted run with one clean state written back. Three kinds, as in the paper:
  `resid` restores the residual stream `blocks.L.resid_post` at one (layer L, position t);
  `mlp` and `attn` restore the MLP outputs (`blocks.l.mlp.out`) or attention outputs
  (`blocks.l.attn.out`) at position t for a window of `window` layers centred on L
  (l in [L - window//2, L + window - window//2), clipped at the ends: ROME's windows).

Total effect TE = p(clean) - p(corrupted); indirect effect IE(L, t) = p(restored) - p(corrupted).
Both are averaged over `samples` noise draws per prompt and over the prompts. A prompt's noise
is drawn from its own generator, seeded from the run's seed and the prompt's index among the
selected prompts (`interpsuite.shards.item_seed`), so it is the same whichever shard runs it.
sigma is, by default (`sigma: subjects`, as in ROME), the standard deviation of the entries of
the token-embedding vectors of every subject token in the dataset (with repetitions);
`sigma: vocab` uses the whole embedding matrix instead. Both come from the embedding matrix, not
the `embed` hook point (which on GPT-2 also holds position embeddings); the noise itself is added
at `embed` (on GPT-2 after the position embeddings are added: the sum is the same).

Positions are pooled across prompts of different lengths into ROME's buckets: first subject
token, middle subject tokens, last subject token, first subsequent token, further tokens, last
token. As in ROME's `average_causal_effects`, a single-token subject counts as both first and
last subject token, a first subsequent token that ends the prompt counts as both first
subsequent and last token, and the middle/further buckets average over token instances (all the
prompts' middle tokens pooled). Positions before the subject are not restored: the noise cannot
reach them in a causal model, so restoring them changes nothing (IE = 0, reported as 0 in the
per-prompt grid) and they belong to no bucket.

Cost: for every prompt and noise draw, one restored run per (kind, layer, position from the
subject on). They run as one batched `sweep` (`interpsuite.models.sweep`, the engine every
patching analyzer uses): the noise is its `base` intervention (applied to every row), each
restoration an item (`sweep_batch_size` rows per pass, one restoration per row). A pass starts
at the earliest (layer L, position t) its rows touch, from the corrupted run: it is fed the
corrupted `blocks.L.resid_pre` at positions t.. and attends to the corrupted keys and values of
the earlier positions; nothing before that point can differ from the corrupted run. On SmolLM2
(2 CPU threads) a prompt and noise draw takes ~3.5 s.

Checks (exact properties of the implementation, not of the model): restoring the whole clean
residual stream after the last layer reproduces p(clean); a row of the batched passes with no
restoration reproduces p(corrupted); the applied noise has standard deviation noise_scale *
sigma (within sampling error) on the subject tokens and is exactly zero elsewhere. The
unrestored row is the sweep's base-only run (started from the corrupted run at the last layer),
the corrupted probability a separate full pass: the check shows the noise is applied once.

Sharding (`interpsuite.shards`): the work items are the selected prompts. With `shard.count` > 1
a job traces only its contiguous block of them and saves each traced prompt (`TracedPrompt`:
probabilities, restored runs, the applied noise on the subject) under data/causal_tracing/shard/;
`interpsuite merge-shards` rebuilds the report from every prompt with the same `build_report`
an unsharded run uses, so the merged tables, metrics, checks, summary and figures are the
unsharded run's exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.figures import FigureStyle
from interpsuite.hooks import Intervention
from interpsuite.models import ModelInfo, TokenBatch
from interpsuite.results import Result
from interpsuite.shards import ShardItem, ShardSpec, item_seed, shard_summary, write_shard

from .pairs import FACTUAL_FILE
from .tracing_plots import plot_bucket_heatmaps, plot_prompt_grid

KINDS: tuple[str, ...] = ("resid", "mlp", "attn")
#: the hook point each kind restores
KIND_SITE: dict[str, str] = {"resid": "resid_post", "mlp": "mlp.out", "attn": "attn.out"}
BUCKETS: tuple[str, ...] = (
    "first_subject",
    "middle_subject",
    "last_subject",
    "first_subsequent",
    "further",
    "last",
)
BUCKET_LABELS: dict[str, str] = {
    "first_subject": "First subject token",
    "middle_subject": "Middle subject tokens",
    "last_subject": "Last subject token",
    "first_subsequent": "First subsequent token",
    "further": "Further tokens",
    "last": "Last token",
}
TARGETS = ("answer", "top")
SIGMAS = ("subjects", "vocab")
#: |p(restored) - p(reference)| allowed by the exactness checks (fp32, batched vs single-row passes)
EXACT_TOLERANCE = 1e-5


@dataclass
class CausalTracingConfig:
    #: "factual" (the shipped dataset) or a .jsonl file with fields prompt, subject, answer[, relation]
    prompts: str = "factual"
    #: prompts traced, taken round-robin over relations (null: all)
    max_prompts: int | None = 4
    #: noise draws per prompt
    samples: int = 2
    #: noise std = noise_scale * sigma (ROME: 3)
    noise_scale: float = 3.0
    #: "subjects": std of the subject tokens' embeddings (ROME); "vocab": of the whole embedding matrix
    sigma: str = "subjects"
    #: layers restored together for mlp/attn, centred on the layer (ROME: 10)
    window: int = 10
    #: what is restored: resid (one hidden state), mlp / attn (module outputs over the window)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    #: "answer": the dataset's answer token; "top": the model's clean top-1 token
    target: str = "answer"
    #: multi-piece answers use their first piece (as ROME does); false: refuse them
    allow_first_piece: bool = True
    #: average only over prompts the model answers correctly (ROME's choice)
    only_correct: bool = False
    #: rows (restorations) per forward pass
    sweep_batch_size: int = 64
    #: this job's block of the prompts (interpsuite.shards): index 0..count-1; count 1 traces them all
    shard: ShardSpec = field(default_factory=ShardSpec)


# --- the factual prompts ---------------------------------------------------------------
@dataclass(frozen=True)
class Fact:
    prompt: str
    subject: str
    answer: str
    relation: str = ""


def check_fact(fact: Fact, where: str) -> None:
    """Weight-free checks of one record: non-empty fields, the subject inside the prompt."""
    if not fact.prompt.strip():
        raise ConfigError(f"{where}: empty prompt")
    if not fact.subject:
        raise ConfigError(f"{where}: empty subject for prompt {fact.prompt!r}; give the subject as it appears in it")
    if fact.subject not in fact.prompt:
        raise ConfigError(
            f"{where}: subject {fact.subject!r} not found in the prompt {fact.prompt!r}; the subject must occur "
            "verbatim in the prompt (same case and spelling)"
        )
    if not fact.answer:
        raise ConfigError(f"{where}: empty answer for prompt {fact.prompt!r}; give the next token, e.g. ' Paris'")


def load_facts(source: str) -> list[Fact]:
    """The shipped factual prompts ("factual") or a user .jsonl file, every record checked."""
    path = FACTUAL_FILE if source == "factual" else Path(source).expanduser()
    if source != "factual" and path.suffix != ".jsonl":
        raise ConfigError(
            f"causal_tracing: prompts={source!r}; give 'factual' or a .jsonl file with fields prompt, subject, answer"
        )
    if not path.exists():
        raise ConfigError(f"causal_tracing: prompts file {path} not found")
    facts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg})") from None
        missing = [k for k in ("prompt", "subject", "answer") if not isinstance(record.get(k), str)]
        if missing:
            raise ConfigError(f"{where}: missing or non-string field(s) {missing}; need prompt, subject, answer")
        fact = Fact(record["prompt"], record["subject"], record["answer"], str(record.get("relation", "")))
        check_fact(fact, where)
        facts.append(fact)
    if not facts:
        raise ConfigError(f"causal_tracing: prompts file {path} has no records")
    return facts


def select_facts(facts: Sequence[Fact], n: int | None) -> list[Fact]:
    """At most n facts, round-robin over relations (file order within one), so a small
    selection still covers every relation."""
    if n is None or n >= len(facts):
        return list(facts)
    groups: dict[str, list[Fact]] = {}
    for fact in facts:
        groups.setdefault(fact.relation, []).append(fact)
    queues = list(groups.values())
    chosen: list[Fact] = []
    depth = 0
    while len(chosen) < n:
        for queue in queues:
            if depth < len(queue) and len(chosen) < n:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def subject_span(tokenizer, prompt: str, subject: str) -> tuple[list[int], int, int]:
    """(token ids of the prompt, first subject token, one past the last) from character offsets.

    A token belongs to the subject when its characters overlap the subject's first occurrence."""
    begin = prompt.find(subject)
    if begin < 0 or not subject:
        raise ConfigError(
            f"causal_tracing: subject {subject!r} not found in the prompt {prompt!r}; the subject must occur "
            "verbatim in the prompt"
        )
    end = begin + len(subject)
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > begin and b > a]
    if not inside:
        raise ConfigError(f"causal_tracing: subject {subject!r} covers no token of the prompt {prompt!r}")
    return list(encoded["input_ids"]), inside[0], inside[-1] + 1


def buckets_of(start: int, end: int, length: int) -> dict[str, list[int]]:
    """ROME's position buckets for a prompt of `length` tokens whose subject is [start, end)."""
    last = length - 1
    return {
        "first_subject": [start],
        "middle_subject": list(range(start + 1, end - 1)),
        "last_subject": [end - 1],
        "first_subsequent": [end] if end <= last else [],
        "further": list(range(end + 1, last)),
        "last": [last],
    }


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """ROME's window of `window` layers around `layer`, clipped to the model."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


# --- one prompt ------------------------------------------------------------------------
@dataclass
class Restoration:
    """One restored run: a kind restored at (layer, position); kind "full" restores every
    position of the last layer's residual stream, kind "none" restores nothing."""

    kind: str
    layer: int
    position: int


@dataclass
class PreparedFact:
    fact: Fact
    batch: TokenBatch  # one row
    start: int
    end: int
    target_id: int
    answer_id: int
    note: str
    #: the prompt's index among the selected prompts (keys its noise; orders the shards' merge)
    index: int = 0

    @property
    def length(self) -> int:
        return int(self.batch.input_ids.shape[1])


@dataclass
class SampleTrace:
    """One noise draw on one prompt."""

    p_corrupted: float
    restored: torch.Tensor  # [n_restorations] p(target) of every restored run
    noise_applied: torch.Tensor  # corrupted embed - clean embed, [T, d]


@dataclass
class PromptTrace:
    prepared: PreparedFact
    p_clean: float
    clean_top: int
    samples: list[SampleTrace]
    restorations: list[Restoration]
    n_layers: int

    @property
    def p_corrupted(self) -> float:
        return float(np.mean([s.p_corrupted for s in self.samples]))

    def effects(self, kind: str) -> np.ndarray:
        """Mean over noise draws of p(restored) - p(corrupted): [n_layers, T] (0 before the subject)."""
        grid = np.zeros((self.n_layers, self.prepared.length))
        index = [i for i, r in enumerate(self.restorations) if r.kind == kind]
        for sample in self.samples:
            values = sample.restored[index].double().cpu().numpy() - sample.p_corrupted
            for i, value in zip(index, values, strict=True):
                r = self.restorations[i]
                grid[r.layer, r.position] += value / len(self.samples)
        return grid

    def control(self, kind: str) -> list[float]:
        """p(restored) of the control rows ("full" or "none") of every noise draw."""
        index = [i for i, r in enumerate(self.restorations) if r.kind == kind]
        return [float(s.restored[i]) for s in self.samples for i in index]


@dataclass
class TracedPrompt:
    """One traced prompt with everything the report reads and nothing that needs the model.

    An unsharded run reports from these; a shard saves them (`to_item`) and the merge reads them
    back (`from_item`): the values are the same bits either way (JSON floats and safetensors
    arrays round-trip exactly), so the merged report equals the unsharded one."""

    index: int
    fact: Fact
    tokens: list[str]
    start: int
    end: int
    target: str  # the target token, decoded
    clean_top: str  # the clean top-1 token, decoded
    correct: bool  # clean top-1 == the answer token
    note: str
    p_clean: float
    p_corrupted_samples: list[float]  # per noise draw
    restored: np.ndarray  # [samples, restorations] p(target) of every restored run (float64)
    noise_subject: np.ndarray  # [samples, end - start, d] the applied noise on the subject tokens
    noise_outside_max: list[float]  # per noise draw: max |applied noise| off the subject tokens
    restorations: list[Restoration]
    n_layers: int

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def p_corrupted(self) -> float:
        return float(np.mean(self.p_corrupted_samples))

    def effects(self, kind: str) -> np.ndarray:
        """Mean over noise draws of p(restored) - p(corrupted): [n_layers, T] (0 before the subject)."""
        grid = np.zeros((self.n_layers, self.length))
        index = [i for i, r in enumerate(self.restorations) if r.kind == kind]
        for restored, p_corrupted in zip(self.restored, self.p_corrupted_samples, strict=True):
            values = restored[index] - p_corrupted
            for i, value in zip(index, values, strict=True):
                r = self.restorations[i]
                grid[r.layer, r.position] += value / len(self.p_corrupted_samples)
        return grid

    def control(self, kind: str) -> list[float]:
        """p(restored) of the control rows ("full" or "none") of every noise draw."""
        index = [i for i, r in enumerate(self.restorations) if r.kind == kind]
        return [float(restored[i]) for restored in self.restored for i in index]

    @classmethod
    def from_trace(cls, trace: PromptTrace, tokenizer) -> TracedPrompt:
        item = trace.prepared
        start, end = item.start, item.end
        subject, outside = [], []
        for sample in trace.samples:
            applied = sample.noise_applied
            subject.append(applied[start:end])
            rest = torch.cat([applied[:start], applied[end:]])
            outside.append(float(rest.double().abs().max()) if rest.numel() else 0.0)
        noise = torch.stack(subject)
        if noise.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds its values exactly
            noise = noise.float()
        return cls(
            index=item.index,
            fact=item.fact,
            tokens=list(item.batch.tokens[0]),
            start=start,
            end=end,
            target=tokenizer.decode([item.target_id]),
            clean_top=tokenizer.decode([trace.clean_top]),
            correct=trace.clean_top == item.answer_id,
            note=item.note,
            p_clean=trace.p_clean,
            p_corrupted_samples=[s.p_corrupted for s in trace.samples],
            restored=torch.stack([s.restored for s in trace.samples]).double().numpy(),
            noise_subject=noise.numpy(),
            noise_outside_max=outside,
            restorations=trace.restorations,
            n_layers=trace.n_layers,
        )

    def to_item(self) -> ShardItem:
        meta = {
            "fact": asdict(self.fact),
            "tokens": self.tokens,
            "subject": [self.start, self.end],
            "target": self.target,
            "clean_top": self.clean_top,
            "correct": self.correct,
            "note": self.note,
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted_samples,
            "noise_outside_max": self.noise_outside_max,
        }
        return ShardItem(self.index, meta, {"restored": self.restored, "noise_subject": self.noise_subject})

    @classmethod
    def from_item(cls, item: ShardItem, kinds: Sequence[str], n_layers: int) -> TracedPrompt:
        meta = item.meta
        start, end = meta["subject"]
        plan = restoration_plan(kinds, n_layers, start, len(meta["tokens"]))
        restored = item.arrays["restored"]
        if restored.shape != (len(meta["p_corrupted"]), len(plan)):
            raise ConfigError(
                f"causal_tracing: shard item {item.index} holds {restored.shape} restored runs, not the "
                f"{len(meta['p_corrupted'])} x {len(plan)} its settings make; rerun that shard"
            )
        return cls(
            index=item.index,
            fact=Fact(**meta["fact"]),
            tokens=list(meta["tokens"]),
            start=start,
            end=end,
            target=meta["target"],
            clean_top=meta["clean_top"],
            correct=bool(meta["correct"]),
            note=meta["note"],
            p_clean=float(meta["p_clean"]),
            p_corrupted_samples=[float(p) for p in meta["p_corrupted"]],
            restored=restored,
            noise_subject=item.arrays["noise_subject"],
            noise_outside_max=[float(v) for v in meta["noise_outside_max"]],
            restorations=plan,
            n_layers=n_layers,
        )


def restoration_plan(kinds: Sequence[str], n_layers: int, start: int, length: int) -> list[Restoration]:
    """Every (kind, layer, position >= subject start) restoration, plus the two controls."""
    plan = [Restoration(kind, layer, t) for kind in kinds for layer in range(n_layers) for t in range(start, length)]
    return [*plan, Restoration("full", n_layers - 1, 0), Restoration("none", 0, 0)]


def restoration_interventions(
    r: Restoration, clean: dict[str, torch.Tensor], window: int, n_layers: int
) -> list[Intervention]:
    """The interventions writing clean states back for one restoration. `clean` maps hook names
    to the clean activations of the one prompt, [T, d] (no batch dimension: such a value is
    written into the selected rows without copying the whole activation)."""
    if r.kind == "none":
        return []
    if r.kind == "full":
        name = f"blocks.{n_layers - 1}.resid_post"
        return [Intervention(name, "replace", value=clean[name])]
    if r.kind == "resid":
        name = f"blocks.{r.layer}.resid_post"
        return [Intervention(name, "replace", value=clean[name], positions=[r.position])]
    names = [f"blocks.{layer}.{KIND_SITE[r.kind]}" for layer in window_layers(r.layer, window, n_layers)]
    return [Intervention(n, "replace", value=clean[n], positions=[r.position]) for n in names]


def probability_metric(target_id: int) -> Callable[[torch.Tensor, TokenBatch | None], torch.Tensor]:
    """p(target) at the last kept position of logits [rows, kept, V] (float64 softmax), per row.

    A `sweep` metric; the batch argument is not needed (every row is the same one-prompt
    input), so the metric can also be called on the logits of a single pass."""

    def metric(logits: torch.Tensor, batch: TokenBatch | None = None) -> torch.Tensor:
        return torch.softmax(logits[:, -1].double(), dim=-1)[:, target_id]

    return metric


def noise_intervention(noise: torch.Tensor, start: int, end: int, length: int) -> Intervention:
    """Add `noise` [end - start, d] to the subject tokens' embeddings (every row)."""
    value = torch.zeros(1, length, noise.shape[-1], dtype=noise.dtype, device=noise.device)
    value[0, start:end] = noise
    return Intervention("embed", "add", value=value, positions=list(range(start, end)))


def clean_names(n_layers: int, kinds: Iterable[str]) -> list[str]:
    sites = {KIND_SITE[k] for k in kinds} | {"resid_post"}
    return ["embed", *(f"blocks.{layer}.{site}" for layer in range(n_layers) for site in sorted(sites))]


def trace_prompt(
    model,
    prepared: PreparedFact,
    noises: Sequence[torch.Tensor],
    kinds: Sequence[str],
    window: int,
    batch_size: int,
) -> PromptTrace:
    """The clean run, then per noise draw the corrupted run and every restoration.

    The restorations are one `sweep` with the noise as its base intervention: each restored
    run is the corrupted run (noise at `embed`) with clean states written back, and starts
    from the corrupted run where its restoration first touches the model."""
    n_layers = model.info.n_layers
    batch = prepared.batch
    metric = probability_metric(prepared.target_id)
    with torch.no_grad():
        result = model.forward(batch, capture=clean_names(n_layers, kinds), logits_to_keep=1)
        clean = {name: value[0] for name, value in result.cache.items()}
        p_clean = float(metric(result.output)[0])
        clean_top = int(result.output[0, -1].argmax())
        plan = restoration_plan(kinds, n_layers, prepared.start, prepared.length)
        items = [restoration_interventions(r, clean, window, n_layers) for r in plan]
        samples = []
        for noise in noises:
            iv = noise_intervention(noise.to(model.device), prepared.start, prepared.end, prepared.length)
            corrupted = model.forward(batch, capture=["embed"], interventions=[iv], logits_to_keep=1)
            restored = model.sweep(batch, items, metric, base=[iv], batch_size=batch_size, logits_to_keep=1)
            applied = corrupted.cache["embed"][0] - clean["embed"]
            samples.append(SampleTrace(float(metric(corrupted.output)[0]), restored[:, 0].cpu(), applied.cpu()))
    return PromptTrace(prepared, p_clean, clean_top, samples, plan, n_layers)


# --- aggregation -----------------------------------------------------------------------
def bucket_table(traces: Sequence[TracedPrompt], kind: str, n_layers: int) -> pd.DataFrame:
    """Mean IE per layer (rows) and bucket (columns), pooled over the prompts' positions."""
    sums = {b: np.zeros(n_layers) for b in BUCKETS}
    counts = dict.fromkeys(BUCKETS, 0)
    for trace in traces:
        grid = trace.effects(kind)
        for bucket, positions in buckets_of(trace.start, trace.end, trace.length).items():
            for t in positions:
                sums[bucket] += grid[:, t]
                counts[bucket] += 1
    table = pd.DataFrame({"layer": np.arange(n_layers)})
    for bucket in BUCKETS:
        table[bucket] = sums[bucket] / counts[bucket] if counts[bucket] else np.nan
    return table


def peak(table: pd.DataFrame) -> tuple[float, int, str]:
    """(value, layer, bucket) of the largest mean IE in a layer x bucket table."""
    values = table[list(BUCKETS)].to_numpy(dtype=float)
    if np.isnan(values).all():
        return float("nan"), -1, ""
    flat = int(np.nanargmax(values))
    row, col = divmod(flat, values.shape[1])
    return float(values[row, col]), int(table["layer"].iloc[row]), BUCKETS[col]


def noise_statistics(traces: Sequence[TracedPrompt]) -> tuple[float, int, float]:
    """(std of the applied noise on subject tokens, number of entries, max |noise| elsewhere)."""
    inside = [torch.from_numpy(noise).double().flatten() for trace in traces for noise in trace.noise_subject]
    outside = max([0.0, *(value for trace in traces for value in trace.noise_outside_max)])
    values = torch.cat(inside)
    return float(values.pow(2).mean().sqrt()), int(values.numel()), outside


@dataclass
class ReportContext:
    """What the report needs besides the traced prompts: the same on every shard."""

    n_layers: int
    model_name: str
    sigma: float
    noise_std: float

    def to_dict(self) -> dict:
        return asdict(self)


def build_report(
    cfg: CausalTracingConfig, traces: Sequence[TracedPrompt], about: ReportContext, style: FigureStyle
) -> Result:
    """Tables, metrics, checks, figures and summary from traced prompts (in index order). Needs
    no model: an unsharded run and `interpsuite merge-shards` both report through here."""
    n_layers = about.n_layers
    sigma, noise_std = about.sigma, about.noise_std
    result = Result()
    tables = {kind: bucket_table(traces, kind, n_layers) for kind in cfg.kinds}
    for kind, table in tables.items():
        result.tables[f"{kind}_by_bucket"] = table
    rows = []
    for trace in traces:
        row = {
            "prompt": trace.fact.prompt,
            "subject": trace.fact.subject,
            "relation": trace.fact.relation,
            "answer": trace.fact.answer,
            "target": trace.target,
            "clean_top": trace.clean_top,
            "correct": trace.correct,
            "n_tokens": trace.length,
            "subject_tokens": f"{trace.start}:{trace.end}",
            "p_clean": trace.p_clean,
            "p_corrupted": trace.p_corrupted,
            "total_effect": trace.p_clean - trace.p_corrupted,
        }
        for kind in cfg.kinds:
            grid = trace.effects(kind)
            layer, t = np.unravel_index(int(np.argmax(grid)), grid.shape)
            row[f"{kind}_max_ie"] = float(grid[layer, t])
            row[f"{kind}_max_layer"] = int(layer)
            row[f"{kind}_max_position"] = int(t)
        row["note"] = trace.note
        rows.append(row)
    prompts = pd.DataFrame(rows)
    result.tables["prompts"] = prompts
    first = traces[0]
    tokens = first.tokens
    grid_rows = []
    grids = {kind: first.effects(kind) for kind in cfg.kinds}
    for kind, grid in grids.items():
        for layer in range(n_layers):
            for t, token in enumerate(tokens):
                grid_rows.append({"kind": kind, "layer": layer, "position": t, "token": token, "ie": grid[layer, t]})
    result.tables["first_prompt_grid"] = pd.DataFrame(grid_rows)

    summary_peaks = {}
    for kind, table in tables.items():
        value, layer, bucket = peak(table)
        result.metrics[f"{kind}.peak_ie"] = value
        result.metrics[f"{kind}.peak_layer"] = float(layer)
        result.metrics[f"{kind}.peak_bucket"] = float(BUCKETS.index(bucket)) if bucket else -1.0
        summary_peaks[kind] = {"ie": round(value, 5), "layer": layer, "bucket": bucket}
        for bucket_name, label in (("last_subject", "last_subject"), ("last", "last_token")):
            column = table[bucket_name].to_numpy(dtype=float)
            best = int(np.nanargmax(column)) if not np.isnan(column).all() else -1
            result.metrics[f"{kind}.{label}.peak_ie"] = float(column[best]) if best >= 0 else float("nan")
            result.metrics[f"{kind}.{label}.peak_layer"] = float(best)
    total = prompts["total_effect"].to_numpy(dtype=float)
    result.metrics["mean_p_clean"] = float(prompts["p_clean"].mean())
    result.metrics["mean_p_corrupted"] = float(prompts["p_corrupted"].mean())
    result.metrics["mean_total_effect"] = float(total.mean())
    result.metrics["fraction_total_effect_positive"] = float((total > 0).mean())
    result.metrics["fraction_correct"] = float(prompts["correct"].mean())
    result.metrics["n_prompts"] = float(len(traces))
    result.metrics["sigma"] = sigma
    result.metrics["noise_std"] = noise_std

    full_err = max(abs(p - t.p_clean) for t in traces for p in t.control("full"))
    none_err = max(
        abs(p - p_corrupted)
        for t in traces
        for p_corrupted, p in zip(t.p_corrupted_samples, t.control("none"), strict=True)
    )
    measured, count, outside = noise_statistics(traces)
    result.metrics["noise_std_measured"] = measured
    # 5 standard errors of a sample std from `count` Gaussian entries (relative: 1/sqrt(2n))
    tolerance = max(0.01, 5.0 / math.sqrt(2 * count))
    result.add_check("full_restore_reproduces_clean_abs_err", full_err, EXACT_TOLERANCE)
    result.add_check("unrestored_row_reproduces_corrupted_abs_err", none_err, EXACT_TOLERANCE)
    result.add_check("noise_std_rel_err", abs(measured / noise_std - 1.0), tolerance)
    result.add_check("noise_outside_subject_max_abs", outside, 0.0)

    result.add_figure(
        "causal_trace",
        plot_bucket_heatmaps,
        {kind: tables[kind] for kind in cfg.kinds},
        BUCKET_LABELS,
        len(traces),
        cfg.window,
        about.model_name,
        style,
    )
    result.add_figure(
        "first_prompt_trace",
        plot_prompt_grid,
        grids,
        tokens,
        (first.start, first.end),
        f"{first.fact.prompt!r} -> {first.target!r}",
        first.p_clean,
        first.p_corrupted,
        cfg.window,
        style,
    )
    multi_piece = [t.fact.answer for t in traces if t.note]
    result.summary = {
        "prompts": len(traces),
        "source": cfg.prompts,
        "samples": cfg.samples,
        "window": cfg.window,
        "target": cfg.target,
        "sigma_from": cfg.sigma,
        "noise_std": round(noise_std, 6),
        "peaks": summary_peaks,
        "mean_total_effect": round(float(total.mean()), 5),
        "fraction_correct": round(float(prompts["correct"].mean()), 4),
        "relations": sorted({t.fact.relation for t in traces}),
        "multi_piece_answers": len(multi_piece),
    }
    return result


class CausalTracing(Analyzer):
    name = "causal_tracing"
    family = "mechanistic"
    description = "ROME causal tracing: restore clean states into a subject-noised run; where the fact is recalled"
    Config = CausalTracingConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: CausalTracingConfig) -> None:
        if not info.is_causal:
            raise ConfigError(
                f"{self.name}: {info.name} is an encoder without a causal LM head; causal tracing measures the "
                "probability of the next token. Use a causal LM (e.g. model=smollm2)"
            )
        bad = [k for k in cfg.kinds if k not in KINDS]
        if bad or not cfg.kinds:
            raise ConfigError(f"{self.name}: kinds={cfg.kinds}; choose a non-empty subset of {list(KINDS)}")
        if cfg.target not in TARGETS:
            raise ConfigError(f"{self.name}: target={cfg.target!r}; choose one of {', '.join(TARGETS)}")
        if cfg.sigma not in SIGMAS:
            raise ConfigError(f"{self.name}: sigma={cfg.sigma!r}; choose one of {', '.join(SIGMAS)}")
        if cfg.samples < 1 or cfg.window < 1 or cfg.sweep_batch_size < 1:
            raise ConfigError(
                f"{self.name}: samples ({cfg.samples}), window ({cfg.window}) and sweep_batch_size "
                f"({cfg.sweep_batch_size}) must be >= 1; e.g. samples: 3, window: 10"
            )
        if cfg.max_prompts is not None and cfg.max_prompts < 1:
            raise ConfigError(f"{self.name}: max_prompts={cfg.max_prompts}; give a positive number or null for all")
        if not cfg.noise_scale > 0:
            raise ConfigError(f"{self.name}: noise_scale={cfg.noise_scale}; must be > 0 (ROME: 3)")
        cfg.shard.check(len(select_facts(load_facts(cfg.prompts), cfg.max_prompts)), f"{self.name}")

    def prepare(self, model, facts: Sequence[Fact], indices: Sequence[int] | None = None) -> list[PreparedFact]:
        """Tokenize, locate subjects and resolve answer tokens: every input error before any forward pass.
        `indices`: the facts' indices among the selected prompts (default 0, 1, ...)."""
        cfg: CausalTracingConfig = self.cfg
        indices = list(range(len(facts))) if indices is None else list(indices)
        prepared = []
        for fact, index in zip(facts, indices, strict=True):
            ids, start, end = subject_span(model.tokenizer, fact.prompt, fact.subject)
            batch = model.tokenize([fact.prompt])
            if batch.input_ids[0].tolist() != ids:
                raise AnalyzerError(f"{self.name}: tokenizer offsets disagree with model.tokenize for {fact.prompt!r}")
            answer_id, note = model.token_id(fact.answer, f"answer of {fact.prompt!r}", cfg.allow_first_piece)
            prepared.append(PreparedFact(fact, batch, start, end, answer_id, answer_id, note, index))
        return prepared

    def sigma(self, model, facts: Sequence[Fact]) -> float:
        weight = model.hf_model.get_input_embeddings().weight.detach()
        if self.cfg.sigma == "vocab":
            return float(weight.double().std())
        ids = []
        for fact in facts:
            token_ids, start, end = subject_span(model.tokenizer, fact.prompt, fact.subject)
            ids.extend(token_ids[start:end])
        return float(weight[torch.as_tensor(ids, device=weight.device)].double().std())

    def estimate(self, info: ModelInfo, cfg: CausalTracingConfig, workload):
        """Per prompt (this shard's): the clean pass, then per noise draw the corrupted pass and one
        sweep of every restoration (kinds x layers x positions from the subject on), each starting
        at the first layer its window touches and at its position (the engine's own pass plan)."""
        selected = select_facts(load_facts(cfg.prompts), cfg.max_prompts)
        mine = cfg.shard.items(len(selected))
        prepared = self.prepare(workload.model, [selected[i] for i in mine], mine)
        n_layers = info.n_layers
        cost = workload.figures(2, 2 * len(cfg.kinds))
        if cfg.target == "top" or cfg.only_correct:
            cost = cost + workload.each_text([item.length for item in prepared], logits=1)
        for item in prepared:
            n = item.length
            starts = []
            for r in restoration_plan(cfg.kinds, n_layers, item.start, n):
                if r.kind == "none":
                    starts.append((n_layers, n))
                elif r.kind == "full":
                    starts.append((n_layers - 1, 0))
                elif r.kind == "resid":
                    starts.append((r.layer, r.position))
                else:
                    starts.append((window_layers(r.layer, cfg.window, n_layers)[0], r.position))
            cost = cost + workload.forward(1, n, logits=1, capture=clean_names(n_layers, cfg.kinds))
            draw = workload.forward(1, n, logits=1, capture=["embed"])
            draw = draw + workload.sweep(1, n, starts, cfg.sweep_batch_size, logits=1, last_position=n - 1)
            cost = cost + draw.times(cfg.samples)
        return cost

    def run(self, ctx: RunContext) -> Result:
        cfg: CausalTracingConfig = self.cfg
        model = ctx.model
        all_facts = load_facts(cfg.prompts)
        selected = select_facts(all_facts, cfg.max_prompts)
        cfg.shard.check(len(selected), self.name)
        mine = cfg.shard.items(len(selected))  # every prompt when unsharded
        prepared = self.prepare(model, [selected[i] for i in mine], mine)
        sigma = self.sigma(model, all_facts)
        noise_std = cfg.noise_scale * sigma
        if cfg.target == "top" or cfg.only_correct:
            prepared = self.resolve_targets(model, prepared)
        traces = []
        for item in ctx.progress(prepared, self.name, len(prepared)):
            generator = torch.Generator().manual_seed(item_seed(ctx.seed, item.index))
            noises = [
                torch.randn(item.end - item.start, model.info.d_model, generator=generator) * noise_std
                for _ in range(cfg.samples)
            ]
            trace = trace_prompt(model, item, noises, cfg.kinds, cfg.window, cfg.sweep_batch_size)
            traces.append(TracedPrompt.from_trace(trace, model.tokenizer))
        if model.hooks_left():
            raise AnalyzerError(f"{self.name}: {model.hooks_left()} hooks left on the model")
        about = ReportContext(model.info.n_layers, model.info.name, sigma, noise_std)
        if not cfg.shard.sharded:
            return build_report(cfg, traces, about, ctx.style)
        # a shard: its own prompts' report, and every traced prompt saved for merge-shards
        folder = write_shard(ctx, self.name, cfg, len(selected), [t.to_item() for t in traces], about.to_dict())
        result = build_report(cfg, traces, about, ctx.style) if traces else Result(metrics={"n_prompts": 0.0})
        result.summary["shard"] = shard_summary(cfg, len(selected), folder, len(traces))
        return result

    @classmethod
    def merge_shard_items(
        cls, cfg: CausalTracingConfig, items: list[ShardItem], shared: dict, style: FigureStyle
    ) -> Result:
        """The unsharded run's Result from every shard's traced prompts (interpsuite.shards)."""
        about = ReportContext(**shared)
        if not items:
            raise AnalyzerError(
                f"{cls.name}: the model answers none of the prompts of any shard correctly; set only_correct: false "
                "(or use a model that knows these facts)"
            )
        ordered = sorted(items, key=lambda item: item.index)
        traces = [TracedPrompt.from_item(item, cfg.kinds, about.n_layers) for item in ordered]
        return build_report(cfg, traces, about, style)

    def resolve_targets(self, model, prepared: list[PreparedFact]) -> list[PreparedFact]:
        """Clean top-1 as target (target: top) and/or keep only correctly answered prompts."""
        cfg: CausalTracingConfig = self.cfg
        kept = []
        with torch.no_grad():
            for item in prepared:
                top = int(model.forward(item.batch, logits_to_keep=1).output[0, -1].argmax())
                if cfg.only_correct and top != item.answer_id:
                    continue
                if cfg.target == "top":
                    item.target_id = top
                kept.append(item)
        if not kept and not cfg.shard.sharded:  # a shard may lose all its prompts; the merge checks the whole
            raise AnalyzerError(
                f"{self.name}: the model answers none of the {len(prepared)} prompts correctly; set only_correct: "
                "false (or use a model that knows these facts)"
            )
        return kept


ANALYZERS = [CausalTracing]
