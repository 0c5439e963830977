"""steering: activation addition along a contrast direction, with a coefficient sweep.

Activation addition (Turner et al. 2023, "Activation addition: steering language models without
optimization"; Rimsky et al. 2024, "Steering Llama 2 via contrastive activation addition"):
the difference between the mean activations of two prompt sets that differ in one property
(positive vs negative sentiment) is a direction in the residual stream; adding a multiple of it
while the model runs on other prompts pushes the output towards that property.

Direction (`blocks.{layer}.{hook}`, default `resid_post` of layer n_layers // 3: early-to-middle
layers steer best in both papers, and a third of the depth keeps SmolLM2's generations fluent):
- from contrast sets: mean over `positive` of the pooled activation minus the same over
  `negative`; each prompt is pooled at its last real token (`position: last`, the token whose
  residual carries the model's expectation of what comes next) or over its real tokens
  (`position: mean`). The built-in sets are short sentiment prompts that end just before a
  sentiment word ("I loved the movie. It was really" vs "I hated the movie. It was really").
- or from a file (`direction_path`, written by this or any other analyzer): a `.safetensors`
  file holding a 1-D float tensor `direction` [d_model] (optional string metadata `hook`,
  `model`), or a `.json` object {"direction": [floats], "hook": "blocks.L.site" (optional),
  "model": name (optional)}. A file's `hook` is used when `layer` is null; an explicit `layer`
  that names another hook point is refused. `positive`/`negative` are then not used.
The direction is saved to `<run dir>/data/steering/direction.safetensors` in that format.

Units (`scale`): `raw` adds coefficient x the direction as it is (the mean difference; 1 = the
whole difference between the two sets); `resid_norm` adds coefficient x the unit direction x
the median norm of the activation at the hook over the evaluated prompts' real tokens at
positions >= 1 (position 0 is skipped: attention-sink tokens carry residual norms 100x the rest
in many models, SmolLM2 included). So 1 = a vector as long as a typical activation.

Sweep: the `prompts` (default: the run's first `max_prompts` texts) run once per coefficient
(0 is always included) with `add` at that hook, at every position (`apply_at: all`) or only at
each prompt's last token (`apply_at: last`; in generation: the prompt's last token and every
generated one), as ONE `HookedModel.sweep` (one item per coefficient). Each target token's
probability at the last position is read per prompt and coefficient (the sweep's base batch
holds the prompts once per target, so every row has one target). The default targets are
" great" and " terrible": on SmolLM2 the built-in direction moves both monotonically, while
" good" (a milder word) peaks near coefficient 0. Byte-level tokenizers (the tiny test models)
split them; the defaults then fall back to their first pieces, and the summary says so.

Generation: greedy decoding of `max_new_tokens` for the first `n_generate` prompts at every
coefficient, all (prompt, coefficient) rows in one batch; every step is a full forward pass
(no KV cache) with the steering added, so steered positions are re-steered consistently.

Outputs: tables `target_probs` (prompt x coefficient x target: prob, log prob),
`by_coefficient` (mean prob per target, and the mean log-odds of the first two targets) and
`generations`; figures `target_probs` (lines over the coefficient) and `generations`;
metrics `prob.<target>.coef_<c>`, `log_odds.coef_<c>`, `spearman.<target>` (coefficient vs
mean prob), `monotonic.<target>` (1 when the mean prob never falls as the coefficient rises;
a property of the model, not a check). Checks: `coefficient_zero_matches_clean` (the sweep's
coefficient 0 reproduces a plain forward's target probabilities, <= 1e-6) and
`steered_forward_matches_sweep` (the largest coefficient re-run as one plain forward,
<= 1e-5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.directions import read_direction, write_direction
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.hooks import Intervention, parse_hook_name
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

from .metrics import last_positions
from .steering_plots import plot_generations, plot_target_probs

#: block hook points whose activation is [batch, pos, d_model]: where a direction can be added
SITES = ("resid_pre", "resid_post", "attn.out", "mlp.out")
POSITIONS = ("last", "mean")
SCALES = ("raw", "resid_norm")
APPLY_AT = ("all", "last")
DIRECTION_FILE = "direction.safetensors"
DEFAULT_TARGETS = (" great", " terrible")
DEFAULT_POSITIVE = [
    "I loved the movie. It was really",
    "The food was delicious and the staff were kind. It was",
    "What a wonderful day, I feel so",
    "She was thrilled with the gift and said it was",
    "The concert was amazing. Honestly, it was",
]
DEFAULT_NEGATIVE = [
    "I hated the movie. It was really",
    "The food was disgusting and the staff were rude. It was",
    "What an awful day, I feel so",
    "She was upset with the gift and said it was",
    "The concert was dreadful. Honestly, it was",
]
#: the sweep's coefficient 0 against a plain forward (probabilities)
CLEAN_TOLERANCE = 1e-6
#: the largest coefficient re-run as a plain forward (probabilities)
STEERED_TOLERANCE = 1e-5


@dataclass
class SteeringConfig:
    layer: int | None = None  # null: n_layers // 3 (or the hook stored in direction_path)
    hook: str = "resid_post"  # resid_pre | resid_post | attn.out | mlp.out
    position: str = "last"  # contrast prompts pooled at their last token (last) or over their tokens (mean)
    positive: list[str] = field(default_factory=lambda: list(DEFAULT_POSITIVE))
    negative: list[str] = field(default_factory=lambda: list(DEFAULT_NEGATIVE))
    direction_path: str | None = None  # .safetensors ("direction" tensor) or .json ({"direction": [...]})
    scale: str = "raw"  # raw: coefficient x mean difference | resid_norm: x unit direction x typical norm
    coefficients: list[float] = field(default_factory=lambda: [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])
    apply_at: str = "all"  # all positions | last (the prompt's last token, and generated tokens)
    targets: list[str] | None = None  # null: [" great", " terrible"] (first pieces where split)
    allow_first_piece: bool = False  # multi-piece targets: use their first piece
    prompts: list[str] | None = None  # null: the run's texts
    max_prompts: int = 16
    n_generate: int = 2  # prompts continued greedily at every coefficient (0: no generations)
    max_new_tokens: int = 20
    sweep_batch_size: int = 64  # rows per forward pass of the coefficient sweep


def default_layer(info: ModelInfo) -> int:
    return info.n_layers // 3


def steering_hook(info: ModelInfo, cfg: SteeringConfig, file_hook: str | None = None) -> str:
    """The hook point to steer at: `blocks.{layer}.{hook}`, or a direction file's own hook."""
    what = "steering"
    if cfg.hook not in SITES:
        raise ConfigError(f"{what}: hook={cfg.hook!r}; choose one of {', '.join(SITES)} (a [batch, pos, d_model] site)")
    if file_hook is not None:
        layer, site = parse_hook_name(file_hook)
        if layer is None or site not in SITES or not 0 <= layer < info.n_layers:
            raise ConfigError(
                f"{what}: the direction file's hook {file_hook!r} is not blocks.L.<{'|'.join(SITES)}> with L in "
                f"0..{info.n_layers - 1} for {info.name}; fix the file's 'hook' or remove it and set layer/hook"
            )
        if cfg.layer is None:
            return file_hook
    layer = check_layers(info, [cfg.layer if cfg.layer is not None else default_layer(info)], what)[0]
    name = f"blocks.{layer}.{cfg.hook}"
    if file_hook is not None and file_hook != name:
        raise ConfigError(
            f"{what}: the direction file was taken at {file_hook!r} but layer/hook ask for {name!r}; set layer: null "
            "to use the file's hook point, or give a direction taken at this one"
        )
    return name


# --- direction from contrast sets -------------------------------------------------------------
def pooled(acts: torch.Tensor, batch: TokenBatch, position: str) -> torch.Tensor:
    """[B, T, d] -> [B, d]: the last real token, or the mean over real tokens."""
    if position == "last":
        return acts[torch.arange(batch.size, device=acts.device), batch.last_index.to(acts.device)]
    mask = batch.attention_mask.to(acts.dtype)[:, :, None]
    return (acts * mask).sum(1) / mask.sum(1)


def mean_pooled(
    model: HookedModel, texts: list[str], hook: str, position: str, batch_size: int, max_length: int | None
) -> torch.Tensor:
    """Mean over texts of the pooled activation at `hook` (float64, [d])."""
    total = None
    for batch in model.batches(texts, batch_size, max_length):
        acts = model.forward(batch, capture=[hook], logits_to_keep=1).cache[hook]
        part = pooled(acts.double(), batch, position).sum(0)
        total = part if total is None else total + part
    return total / len(texts)


def contrast_direction(
    model: HookedModel,
    positive: list[str],
    negative: list[str],
    hook: str,
    position: str = "last",
    batch_size: int = 8,
    max_length: int | None = None,
) -> torch.Tensor:
    """mean(pooled activation over `positive`) - mean(... over `negative`) at `hook`: [d] float32."""
    with torch.no_grad():
        pos = mean_pooled(model, positive, hook, position, batch_size, max_length)
        neg = mean_pooled(model, negative, hook, position, batch_size, max_length)
    return (pos - neg).float()


def typical_norm(acts: torch.Tensor, batch: TokenBatch) -> float:
    """Median L2 norm of the activation over real tokens at positions >= 1 (all real tokens if none)."""
    mask = batch.attention_mask.bool().to(acts.device)
    later = mask.clone()
    later[:, 0] = False
    norms = acts.double().norm(dim=-1)
    chosen = norms[later] if later.any() else norms[mask]
    return float(chosen.median())


# --- targets ----------------------------------------------------------------------------------
def resolve_targets(model: HookedModel, targets: list[str] | None, allow_first_piece: bool) -> tuple[list[int], list]:
    """(token ids, notes). Default [" great", " terrible"]; on tokenizers that split those words
    (byte-level test models) the first pieces of "great"/"terrible" stand in, and a note says so."""
    notes: list[str] = []
    if targets is None:
        try:
            ids = [model.token_id(t, "steering target")[0] for t in DEFAULT_TARGETS]
        except ConfigError:
            picked = [model.token_id(t.strip(), "steering target", allow_first_piece=True) for t in DEFAULT_TARGETS]
            ids = [i for i, _ in picked]
            notes.append(f"{list(DEFAULT_TARGETS)} are not single tokens for {model.info.name}: using first pieces")
    else:
        ids = []
        for t in targets:
            token, note = model.token_id(t, "steering target", allow_first_piece)
            ids.append(token)
            if note:
                notes.append(note)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"steering: targets map to repeated token ids {ids}; give targets that are distinct tokens")
    return ids, notes


def target_labels(model: HookedModel, ids: list[int]) -> list[str]:
    return [model.tokenizer.decode([i]) for i in ids]


def metric_slugs(labels: list[str]) -> list[str]:
    """Metric-key-safe names of the targets ("good", "bad"; t0, t1 for punctuation), unique."""
    slugs = []
    for i, label in enumerate(labels):
        slug = re.sub(r"\W+", "", label) or f"t{i}"
        slugs.append(slug if slug not in slugs else f"{slug}_{i}")
    return slugs


def target_logprob_metric(target_ids: torch.Tensor, column: torch.Tensor):
    """A sweep metric: each row's log-probability of its own target at its last position."""

    def metric(output: torch.Tensor, repeated: TokenBatch) -> torch.Tensor:
        k = output.shape[0] // target_ids.shape[0]
        rows = torch.arange(output.shape[0], device=output.device)
        last = output[rows, column.repeat(k).to(output.device)].float().log_softmax(-1)
        return last.gather(1, target_ids.repeat(k).to(output.device)[:, None])[:, 0]

    return metric


def steering_value(step: torch.Tensor, coefficients: torch.Tensor, batch: TokenBatch, apply_at: str, start=None):
    """The `add` value for rows steered with `coefficients` [R]: [R, 1, d] (all positions) or [R, T, d]
    (`apply_at: last`: positions >= `start` per row, default each row's last real token)."""
    step = step.to(batch.input_ids.device)
    value = coefficients.to(step.device)[:, None, None] * step[None, None, :]
    if apply_at == "all":
        return value
    first = batch.last_index if start is None else start
    positions = torch.arange(batch.input_ids.shape[1], device=step.device)[None, :]
    mask = (positions >= first.to(step.device)[:, None]).to(step.dtype)
    return value * mask[:, :, None]


def greedy_generate(
    model: HookedModel,
    prompts: list[str],
    hook: str,
    step: torch.Tensor,
    coefficients: list[float],
    apply_at: str,
    max_new_tokens: int,
    max_length: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of every prompt at every coefficient, all rows in one batch.

    Row r = prompt r // len(coefficients) at coefficient r % len(coefficients). Each step is a
    full forward pass over the right-padded rows with the steering added; a row stops at EOS."""
    start = model.tokenize(prompts, max_length)
    n_coef = len(coefficients)
    repeat = torch.arange(start.size, device=start.input_ids.device).repeat_interleave(n_coef)
    lengths = start.lengths[repeat].clone()
    prompt_last = lengths - 1
    ids = torch.full((len(repeat), int(lengths.max()) + max_new_tokens), model.tokenizer.pad_token_id)
    ids = ids.to(start.input_ids.device)
    ids[:, : start.input_ids.shape[1]] = start.input_ids[repeat]
    coefs = torch.tensor(coefficients, dtype=torch.float32).repeat(start.size)
    eos = model.tokenizer.eos_token_id
    done = torch.zeros(len(repeat), dtype=torch.bool, device=ids.device)
    generated: list[list[int]] = [[] for _ in range(len(repeat))]
    positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
    for _ in range(max_new_tokens):
        width = int(lengths.max())
        mask = (positions[:, :width] < lengths[:, None]).long()
        batch = TokenBatch(ids[:, :width], mask, [[] for _ in range(len(repeat))], list(range(len(repeat))))
        value = steering_value(step, coefs, batch, apply_at, prompt_last)
        keep, column = last_positions(batch)
        with torch.no_grad():
            out = model.forward(batch, interventions=[Intervention(hook, "add", value=value)], logits_to_keep=keep)
        rows = torch.arange(len(repeat), device=ids.device)
        nxt = out.output[rows, column.to(ids.device)].argmax(-1)
        for r in torch.nonzero(~done).flatten().tolist():
            token = int(nxt[r])
            ids[r, lengths[r]] = token
            generated[r].append(token)
            if eos is not None and token == eos:
                done[r] = True
        lengths = torch.where(done, lengths, lengths + 1)
        if bool(done.all()):
            break
    return generated


class Steering(Analyzer):
    name = "steering"
    family = "mechanistic"
    description = "Activation addition along a contrast direction: coefficient sweep of target probabilities"
    Config = SteeringConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: SteeringConfig) -> None:
        what = self.name
        if not info.is_causal:
            raise ConfigError(
                f"{what}: {info.name} is an encoder without a causal LM head; steering reads next-token "
                "probabilities and generates text. Use a causal LM (e.g. model=smollm2)"
            )
        for option, allowed in (("position", POSITIONS), ("scale", SCALES), ("apply_at", APPLY_AT)):
            if getattr(cfg, option) not in allowed:
                raise ConfigError(f"{what}: {option}={getattr(cfg, option)!r}; choose one of {', '.join(allowed)}")
        file_hook = None
        if cfg.direction_path is not None:
            vector, meta = read_direction(cfg.direction_path, f"{what}.direction_path")
            if vector.numel() != info.d_model:
                raise ConfigError(
                    f"{what}: the direction in {cfg.direction_path} has {vector.numel()} entries but {info.name} has "
                    f"d_model={info.d_model}; give a direction taken from this model"
                )
            file_hook = meta.get("hook")
        else:
            for option in ("positive", "negative"):
                texts = getattr(cfg, option)
                if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
                    raise ConfigError(
                        f"{what}: {option} must be a non-empty list of non-empty prompts (got {list(texts)}); or give "
                        "direction_path"
                    )
        steering_hook(info, cfg, file_hook)
        if not cfg.coefficients:
            raise ConfigError(f"{what}: coefficients is empty; give e.g. [-4, -2, 0, 2, 4]")
        if cfg.targets is not None and (not cfg.targets or any(not t for t in cfg.targets)):
            raise ConfigError(f"{what}: targets must be a non-empty list of tokens such as [' good', ' bad'], or null")
        if cfg.prompts is not None and (not cfg.prompts or any(not p for p in cfg.prompts)):
            raise ConfigError(f"{what}: prompts must be a non-empty list of non-empty texts, or null (the run's texts)")
        for option in ("max_prompts", "max_new_tokens", "sweep_batch_size"):
            if getattr(cfg, option) < 1:
                raise ConfigError(f"{what}: {option} must be >= 1, got {getattr(cfg, option)}")
        if cfg.n_generate < 0:
            raise ConfigError(f"{what}: n_generate must be >= 0, got {cfg.n_generate}")

    def direction(self, ctx: RunContext) -> tuple[torch.Tensor, str, str]:
        """(raw direction [d], hook point, where it came from)."""
        cfg: SteeringConfig = self.cfg
        info = ctx.model.info
        if cfg.direction_path is not None:
            vector, meta = read_direction(cfg.direction_path, f"{self.name}.direction_path")
            hook = steering_hook(info, cfg, meta.get("hook"))
            return vector.to(ctx.model.device), hook, f"file {cfg.direction_path}"
        hook = steering_hook(info, cfg)
        vector = contrast_direction(
            ctx.model, list(cfg.positive), list(cfg.negative), hook, cfg.position, ctx.batch_size, ctx.max_length
        )
        source = f"contrast: {len(cfg.positive)} positive - {len(cfg.negative)} negative prompts, {cfg.position} token"
        return vector, hook, source

    def estimate(self, info: ModelInfo, cfg: SteeringConfig, workload):
        """The contrast sets (when no direction file), the clean prompts, one sweep of every
        coefficient (prompts x targets rows each), the strongest coefficient once more, and the
        uncached greedy continuations (the whole prefix again at every new token)."""
        model = workload.model
        hook = steering_hook(info, cfg)
        prompts = list(cfg.prompts if cfg.prompts is not None else workload.texts)[: cfg.max_prompts]
        batch = model.tokenize(prompts, workload.max_length)
        keep, _ = last_positions(batch)
        rows, width = batch.size, int(batch.input_ids.shape[1])
        cost = workload.forward(rows, width, logits=len(keep), capture=[hook], count=2)
        if cfg.direction_path is None:
            cost = cost + workload.forward_texts(cfg.positive, logits=1, capture=[hook])
            cost = cost + workload.forward_texts(cfg.negative, logits=1, capture=[hook])
        n_targets = len(resolve_targets(model, cfg.targets, cfg.allow_first_piece)[0])
        coefficients = sorted({float(c) for c in [*cfg.coefficients, 0.0]})
        layer = parse_hook_name(hook)[0]
        repeated = batch.repeat(n_targets)
        starts = [(layer, 0)] * len(coefficients)
        cost = cost + workload.sweep_batch(repeated, starts, max(repeated.size, cfg.sweep_batch_size), keep)
        if cfg.n_generate > 0:
            shown = workload.token_lengths(prompts[: cfg.n_generate])
            generated = workload.generate(len(shown) * len(coefficients), max(shown), cfg.max_new_tokens, cached=False)
            cost = cost + generated.note(f"greedy continuations: all {cfg.max_new_tokens} tokens (EOS may stop sooner)")
        return cost + workload.figures(1 + int(cfg.n_generate > 0), 1 + len(prompts[: cfg.n_generate]))

    def run(self, ctx: RunContext) -> Result:
        cfg: SteeringConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        target_ids, notes = resolve_targets(model, cfg.targets, cfg.allow_first_piece)
        prompts = list(cfg.prompts if cfg.prompts is not None else ctx.inputs.texts)[: cfg.max_prompts]
        direction, hook, source = self.direction(ctx)
        norm = float(direction.norm())
        if norm == 0.0:
            raise AnalyzerError(
                f"{self.name}: the direction at {hook} is zero (the positive and negative sets give the same mean); "
                "use contrast sets that differ"
            )
        saved = write_direction(ctx.data_dir(self.name) / DIRECTION_FILE, direction, hook, model=info.name)

        batch = model.tokenize(prompts, ctx.max_length)
        keep, column = last_positions(batch)
        with torch.no_grad():
            clean = model.forward(batch, capture=[hook], logits_to_keep=keep)
        rows = torch.arange(batch.size, device=clean.output.device)
        ids = torch.tensor(target_ids, device=clean.output.device)
        clean_probs = clean.output[rows, column.to(rows.device)].float().softmax(-1)[:, ids]  # [B, targets]
        typical = typical_norm(clean.cache[hook], batch)
        step = direction if cfg.scale == "raw" else direction / norm * typical

        coefficients = sorted({float(c) for c in [*cfg.coefficients, 0.0]})
        n_targets, base = len(target_ids), batch.size
        # the base batch holds the prompts once per target: row t * B + p reads target t
        rows_batch = batch.repeat(n_targets)
        row_targets = ids.repeat_interleave(base)
        items = [[Intervention(hook, "add", value=self.value(step, c, rows_batch))] for c in coefficients]
        with torch.no_grad():
            logprobs = model.sweep(
                rows_batch,
                items,
                target_logprob_metric(row_targets, column.repeat(n_targets)),
                batch_size=max(rows_batch.size, cfg.sweep_batch_size),
                logits_to_keep=keep,
                progress=lambda chunks: ctx.progress(chunks, f"{self.name} sweep", len(chunks)),
            )
        logprobs = logprobs.reshape(len(coefficients), n_targets, base).double().cpu()  # [coef, target, prompt]
        probs = logprobs.exp()
        result = Result()
        zero = coefficients.index(0.0)
        result.add_check(
            "coefficient_zero_matches_clean",
            float((probs[zero].T - clean_probs.double().cpu()).abs().max()),
            CLEAN_TOLERANCE,
        )
        strongest = max(range(len(coefficients)), key=lambda i: (abs(coefficients[i]), coefficients[i]))
        value = self.value(step, coefficients[strongest], batch)
        with torch.no_grad():
            out = model.forward(batch, interventions=[Intervention(hook, "add", value=value)], logits_to_keep=keep)
        steered = out.output[rows, column.to(rows.device)].float().softmax(-1)[:, ids].double().cpu()
        result.add_check(
            "steered_forward_matches_sweep", float((probs[strongest].T - steered).abs().max()), STEERED_TOLERANCE
        )

        labels = target_labels(model, target_ids)
        slugs = metric_slugs(labels)
        result.tables["target_probs"] = pd.DataFrame(
            [
                {
                    "prompt_id": p,
                    "prompt": prompts[p],
                    "coefficient": c,
                    "target": labels[t],
                    "prob": float(probs[i, t, p]),
                    "logprob": float(logprobs[i, t, p]),
                }
                for i, c in enumerate(coefficients)
                for t in range(n_targets)
                for p in range(base)
            ]
        )
        mean_probs = probs.mean(2).numpy()  # [coef, target]
        by_coef = pd.DataFrame({"coefficient": coefficients})
        for t, label in enumerate(labels):
            by_coef[f"prob[{label}]"] = mean_probs[:, t]
        log_odds = None
        if n_targets >= 2:
            log_odds = (logprobs[:, 0] - logprobs[:, 1]).mean(1).numpy()
            by_coef[f"log_odds[{labels[0]} vs {labels[1]}]"] = log_odds
        result.tables["by_coefficient"] = by_coef
        title = f"{info.name}: steering at {hook} ({cfg.scale} units, {cfg.apply_at} positions), {base} prompts"
        result.add_figure(
            "target_probs", plot_target_probs, coefficients, mean_probs, labels, log_odds, title, ctx.style
        )

        for i, c in enumerate(coefficients):
            for t, slug in enumerate(slugs):
                result.metrics[f"prob.{slug}.coef_{c:+g}"] = float(mean_probs[i, t])
            if log_odds is not None:
                result.metrics[f"log_odds.coef_{c:+g}"] = float(log_odds[i])
        monotonic = {}
        for t, slug in enumerate(slugs):
            rising = bool(np.all(np.diff(mean_probs[:, t]) >= 0))
            monotonic[labels[t]] = rising
            result.metrics[f"monotonic.{slug}"] = float(rising)
            result.metrics[f"spearman.{slug}"] = spearman_with_order(mean_probs[:, t])
        if log_odds is not None:
            result.metrics["monotonic.log_odds"] = float(np.all(np.diff(log_odds) >= 0))
        result.metrics["direction_norm"] = norm
        result.metrics["typical_norm"] = typical
        result.metrics["step_norm"] = float(step.norm())

        generations = None
        if cfg.n_generate > 0:
            generations = self.generate(ctx, prompts[: cfg.n_generate], hook, step, coefficients)
            result.tables["generations"] = generations
            result.add_figure(
                "generations",
                plot_generations,
                generations,
                f"{info.name}: greedy continuations steered at {hook}",
                ctx.style,
            )
        result.summary = {
            "hook": hook,
            "direction": source,
            "direction_file": str(saved),
            "scale": cfg.scale,
            "apply_at": cfg.apply_at,
            "coefficients": coefficients,
            "prompts": base,
            "targets": labels,
            "target_notes": notes,
            "mean_prob": {labels[t]: [round(float(v), 6) for v in mean_probs[:, t]] for t in range(n_targets)},
            "monotonic": monotonic,
        }
        if log_odds is not None:
            result.summary["log_odds"] = [round(float(v), 4) for v in log_odds]
        if generations is not None:
            first = generations[generations.prompt_id == 0]
            result.summary["generations"] = {f"{r.coefficient:+g}": r.generation for r in first.itertuples()}
        return result

    def value(self, step: torch.Tensor, coefficient: float, batch: TokenBatch) -> torch.Tensor:
        """The `add` value of one coefficient: coefficient x step (all positions), or masked to the last tokens."""
        if self.cfg.apply_at == "all":
            return coefficient * step
        return steering_value(step, torch.full((batch.size,), coefficient), batch, "last")

    def generate(
        self, ctx: RunContext, prompts: list[str], hook: str, step: torch.Tensor, coefficients: list[float]
    ) -> pd.DataFrame:
        cfg: SteeringConfig = self.cfg
        model = ctx.model
        longest = int(model.tokenize(prompts, ctx.max_length).lengths.max())
        if longest + cfg.max_new_tokens > model.info.max_positions:
            raise ConfigError(
                f"{self.name}: prompts of {longest} tokens + max_new_tokens={cfg.max_new_tokens} exceed the "
                f"{model.info.max_positions} positions of {model.info.name}; lower max_new_tokens"
            )
        tokens = greedy_generate(
            model, prompts, hook, step, coefficients, cfg.apply_at, cfg.max_new_tokens, ctx.max_length
        )
        eos = model.tokenizer.eos_token_id
        records = []
        for r, new in enumerate(tokens):
            p, i = divmod(r, len(coefficients))
            text_ids = new[:-1] if new and new[-1] == eos else new
            records.append(
                {
                    "prompt_id": p,
                    "prompt": prompts[p],
                    "coefficient": coefficients[i],
                    "generation": model.tokenizer.decode(text_ids),
                    "n_tokens": len(new),
                }
            )
        return pd.DataFrame(records)


def spearman_with_order(values: np.ndarray) -> float:
    """Spearman correlation between position (the sorted coefficients) and values; NaN if constant."""
    ranks = pd.Series(values).rank().to_numpy()
    if len(values) < 2 or ranks.std() == 0:
        return float("nan")
    return float(np.corrcoef(np.arange(len(values)), ranks)[0, 1])


ANALYZERS = [Steering]
