"""`refusal_direction`: the refusal direction and its two interventions (Arditi et al. 2024).

A thin analyzer over `refusal.py` (see its docstring for the method):

1. The decline and harmless requests (shipped sets, or your .jsonl files with a text and a
   split each) are formatted with the model's chat template.
2. Candidate directions: mean(decline) - mean(harmless) of the `site` activation at every
   candidate layer (default: all but the last 20%) and post-instruction position
   (default -1..-5), from the train split, one capture pass per batch for every layer.
3. Choice: every candidate is scored on the val split with two batched sweeps, by the
   refusal score (log-odds of the refusal-start tokens at the first generated position):
   ablated on decline prompts (how far it lowers the score) and added on harmless prompts
   (how far it raises it); the ablation sweep also measures the KL divergence of the
   harmless prompts' next-token distribution from the clean one. `select_by: both` picks the
   largest sum of the two shifts among the candidates whose ablation keeps KL <= `max_kl`
   and whose addition raises the score (Arditi et al.'s filters; see `choose`).
4. Report, on the test split: refusal rates by phrase matching of greedy generations and
   refusal scores, (a) decline prompts baseline / direction ablated at every layer / a
   random direction of the same norm ablated the same way, (b) harmless prompts baseline /
   direction added at the chosen layer / the random direction added.

The direction is saved to `<run dir>/data/refusal_direction/direction.safetensors` (with its
hook point), which `steering` reads with `direction_path`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext, check_layers
from interpsuite.directions import write_direction
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.figures import FigureStyle, figure_function
from interpsuite.models import HookedModel, ModelInfo
from interpsuite.results import Result

from .generation import generate
from .refusal import (
    DECLINE_FILE,
    DEFAULT_PHRASES,
    DEFAULT_REFUSAL_TOKENS,
    HARMLESS_FILE,
    SITES,
    WRITERS,
    RefusalMatcher,
    RequestSet,
    ablation_interventions,
    addition_interventions,
    candidate_directions,
    check_positions,
    default_layers,
    format_prompts,
    forward_scores,
    greedy_reference,
    last_logp,
    random_like,
    read_requests,
    refusal_token_ids,
    score_candidates,
    score_metric,
)

SELECT_BY = ("both", "ablation", "addition")
DIRECTION_FILE = "direction.safetensors"
#: a model that refuses fewer than this share of the decline test prompts "rarely refuses"
RARE_REFUSAL = 0.1
#: sweep vs plain forward, refusal score (log-odds)
SWEEP_TOLERANCE = 1e-4
#: |<ablated activation, unit direction>| relative to the median activation norm
PROJECTION_TOLERANCE = 1e-4
CONDITIONS = {
    "decline": ("baseline", "ablated", "random_ablated"),
    "harmless": ("baseline", "added", "random_added"),
}


@dataclass
class RefusalDirectionConfig:
    decline_path: str | None = None  # null: the shipped decline set (.jsonl: text + split train|val|test)
    harmless_path: str | None = None  # null: the shipped harmless set, matched to the decline set
    text_field: str = "text"
    split_field: str = "split"
    system_prompt: str | None = None  # null: the chat template's own default
    site: str = "resid_pre"  # resid_pre | resid_post: where candidate directions are read and added
    layers: list[int] | None = None  # candidate layers; null: all but the last exclude_last_fraction
    exclude_last_fraction: float = 0.2
    positions: list[int] = field(default_factory=lambda: [-1, -2, -3, -4, -5])  # from the prompt end
    select_by: str = "both"  # both | ablation | addition: the validation effect that picks the candidate
    max_kl: float = 0.1  # filter: KL(clean || ablated) on harmless val prompts at most this (Arditi et al.)
    refusal_tokens: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_TOKENS))
    refusal_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_PHRASES))
    match_chars: int = 60  # phrases are searched in the first N characters of a generation
    addition_coefficient: float = 1.0  # multiples of the mean difference added on harmless prompts
    max_val: int | None = 16  # val prompts per set used to choose the candidate (null: all)
    max_test: int | None = None  # test prompts per set for rates and generations (null: all)
    max_new_tokens: int = 20
    random_seed: int = 0  # seed of the random control direction
    sweep_batch_size: int = 64  # rows per forward pass of the candidate sweeps
    generate_batch_size: int = 48  # rows per generate call (prompts x 3 conditions)
    n_samples: int = 3  # generations per condition shown in the summary and figure


def load_request_sets(cfg: RefusalDirectionConfig, what: str) -> tuple[RequestSet, RequestSet]:
    sets = []
    for name, path, default in (
        ("decline", cfg.decline_path, DECLINE_FILE),
        ("harmless", cfg.harmless_path, HARMLESS_FILE),
    ):
        try:
            sets.append(read_requests(path or default, name, cfg.text_field, cfg.split_field))
        except ConfigError as err:
            raise ConfigError(f"{what}: {err}") from None
    return sets[0], sets[1]


class RefusalDirection(Analyzer):
    name = "refusal_direction"
    family = "safety"
    description = "Refusal direction (difference of means) with directional ablation and activation addition"
    Config = RefusalDirectionConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: RefusalDirectionConfig) -> RefusalDirectionConfig:
        what = self.name
        if not info.is_causal:
            raise ConfigError(f"{what}: {info.name} is an encoder; refusal needs a causal chat LM (e.g. model=smollm2)")
        if cfg.site not in SITES:
            raise ConfigError(f"{what}.site: {cfg.site!r}; choose one of {', '.join(SITES)}")
        missing = [s for s in (cfg.site, "resid_pre", *WRITERS) if s not in info.block_sites()]
        if missing:
            raise ConfigError(
                f"{what}: {info.name} has no per-block site(s) {missing}; directional ablation needs them"
            )
        if not 0.0 <= cfg.exclude_last_fraction < 1.0:
            raise ConfigError(f"{what}.exclude_last_fraction: {cfg.exclude_last_fraction}; give a value in [0, 1)")
        layers = (
            check_layers(info, cfg.layers, f"{what}.layers")
            if cfg.layers is not None
            else default_layers(info, cfg.exclude_last_fraction)
        )
        if len(set(layers)) != len(layers):
            raise ConfigError(f"{what}.layers: {cfg.layers} lists a layer twice")
        check_positions(cfg.positions, f"{what}.positions")
        if not cfg.max_kl > 0:
            raise ConfigError(f"{what}.max_kl: {cfg.max_kl}; give a positive KL bound in nats, e.g. 0.1")
        if cfg.select_by not in SELECT_BY:
            raise ConfigError(f"{what}.select_by: {cfg.select_by!r}; choose one of {', '.join(SELECT_BY)}")
        if not cfg.refusal_tokens or any(not isinstance(t, str) or not t for t in cfg.refusal_tokens):
            raise ConfigError(f"{what}.refusal_tokens: give a non-empty list of tokens, e.g. ['Sorry', 'I']")
        try:
            RefusalMatcher(tuple(cfg.refusal_phrases or ()), cfg.match_chars)
        except ConfigError as err:
            raise ConfigError(f"{what}: {err}") from None
        for option in ("max_val", "max_test"):
            value = getattr(cfg, option)
            if value is not None and value < 1:
                raise ConfigError(f"{what}.{option}: {value}; give >= 1 or null (all)")
        for option in ("max_new_tokens", "sweep_batch_size", "generate_batch_size"):
            if getattr(cfg, option) < 1:
                raise ConfigError(f"{what}.{option} must be >= 1, got {getattr(cfg, option)}")
        if cfg.n_samples < 0:
            raise ConfigError(f"{what}.n_samples must be >= 0, got {cfg.n_samples}")
        load_request_sets(cfg, what)
        return RefusalDirectionConfig(**{**cfg.__dict__, "layers": layers})

    # --- run -------------------------------------------------------------------------------
    def estimate(self, info: ModelInfo, cfg: RefusalDirectionConfig, workload):
        """Mean activations of the training prompts, two sweeps over every candidate (directional
        ablation from layer 0 on decline + harmless validation prompts; addition at the candidate's
        layer on harmless ones), the checks, and per test set a sweep of 3 conditions and the cached
        greedy generations of every prompt under each (all max_new_tokens: EOS may stop sooner)."""
        model = workload.model
        layers = list(cfg.layers if cfg.layers is not None else default_layers(info, cfg.exclude_last_fraction))
        positions = check_positions(cfg.positions)
        decline, harmless = load_request_sets(cfg, self.name)

        def lengths(requests, split: str, limit: int | None) -> list[int]:
            formatted, _ = format_prompts(model.tokenizer, requests.part(split, limit), cfg.system_prompt)
            return workload.token_lengths(formatted, None)

        def plain(rows: list[int], **options):
            return workload.forward(len(rows), max(rows), logits=1, **options)

        def swept(rows: list[int], starts: list[tuple[int, int]]):
            return workload.sweep(len(rows), max(rows), starts, max(cfg.sweep_batch_size, len(rows)), logits=1)

        hooks = [f"blocks.{layer}.{cfg.site}" for layer in layers]
        train = lengths(decline, "train", None) + lengths(harmless, "train", None)
        cost = workload.forward_batches(train, logits=1, capture=hooks)
        val_d, val_h = lengths(decline, "val", cfg.max_val), lengths(harmless, "val", cfg.max_val)
        n = len(layers) * len(positions)
        cost = cost + plain(val_d) + plain(val_h)
        cost = cost + swept(val_d + val_h, [(0, 0)] * n)  # ablation projects out from layer 0 on
        cost = cost + swept(val_h, [(layer, 0) for layer in layers for _ in positions])
        cost = cost + plain(val_d) + plain(val_h) + plain(val_d, capture=hooks)  # the checks
        for requests in (decline, harmless):
            test = lengths(requests, "test", cfg.max_test)
            cost = cost + swept(test, [(0, 0)] * 3)
            per_call = max(1, cfg.generate_batch_size // 3)
            for first in range(0, len(test), per_call):
                chunk = test[first : first + per_call]
                cost = cost + workload.generate(3 * len(chunk), max(chunk), cfg.max_new_tokens)
        return cost + workload.figures(3, 6) + workload.table(n, 11)

    def run(self, ctx: RunContext) -> Result:
        cfg: RefusalDirectionConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        layers = list(cfg.layers if cfg.layers is not None else default_layers(info, cfg.exclude_last_fraction))
        positions = check_positions(cfg.positions)
        decline, harmless = load_request_sets(cfg, self.name)
        token_ids, token_notes = refusal_token_ids(model, cfg.refusal_tokens)
        ids = torch.tensor(token_ids, device=model.device)
        matcher = RefusalMatcher(tuple(cfg.refusal_phrases), cfg.match_chars)

        def prompts(requests: RequestSet, split: str, limit: int | None) -> list[str]:
            formatted, _ = format_prompts(model.tokenizer, requests.part(split, limit), cfg.system_prompt)
            self._check_lengths(model, formatted, ctx.max_length, positions)
            return formatted

        _, template_note = format_prompts(model.tokenizer, ["x"], cfg.system_prompt)
        train_d, train_h = prompts(decline, "train", None), prompts(harmless, "train", None)
        val_d, val_h = prompts(decline, "val", cfg.max_val), prompts(harmless, "val", cfg.max_val)
        test_d, test_h = prompts(decline, "test", cfg.max_test), prompts(harmless, "test", cfg.max_test)

        directions = candidate_directions(
            model, train_d, train_h, layers, positions, cfg.site, ctx.batch_size, None, ctx.progress
        ).float()  # [L, P, d]
        val_batch_d, val_batch_h = model.tokenize(val_d), model.tokenize(val_h)
        base_d = float(forward_scores(model, val_batch_d, ids).double().mean())
        base_h = float(forward_scores(model, val_batch_h, ids).double().mean())
        scores = score_candidates(
            model, directions, layers, cfg.site, val_d, val_h, ids, cfg.addition_coefficient,
            cfg.sweep_batch_size, lambda chunks: ctx.progress(chunks, f"{self.name} candidates", len(chunks)),
        )  # fmt: skip
        ablated, added = scores.ablated, scores.added
        ablation_effect = base_d - ablated  # how far ablation lowers refusal on decline prompts
        addition_effect = added - base_h  # how far addition raises it on harmless prompts
        effect = {"both": ablation_effect + addition_effect, "ablation": ablation_effect, "addition": addition_effect}
        chosen_effect = effect[cfg.select_by]
        nonzero = directions.norm(dim=-1).cpu() > 0  # e.g. embeddings of the same template tokens: no direction
        if not bool(nonzero.any()):
            raise AnalyzerError(
                f"{self.name}: every candidate direction is zero (decline and harmless activations agree at every "
                "candidate layer and position); use later layers or other positions"
            )
        ci, cj, selection_note = choose(chosen_effect, scores.kl, addition_effect, cfg.max_kl, nonzero)
        layer, position = layers[ci], positions[cj]
        hook = f"blocks.{layer}.{cfg.site}"
        direction = directions[ci, cj].to(model.device)
        control = random_like(direction, cfg.random_seed)

        result = Result()
        result.tables["candidates"] = pd.DataFrame(
            [
                {
                    "layer": layers[i],
                    "position": positions[j],
                    "direction_norm": float(directions[i, j].norm()),
                    "ablated_score": float(ablated[i, j]),
                    "added_score": float(added[i, j]),
                    "ablation_effect": float(ablation_effect[i, j]),
                    "addition_effect": float(addition_effect[i, j]),
                    "harmless_kl_ablated": float(scores.kl[i, j]),
                    "effect": float(chosen_effect[i, j]),
                    "passes_filters": bool(scores.kl[i, j] <= cfg.max_kl and addition_effect[i, j] > 0),
                    "chosen": (i, j) == (ci, cj),
                }
                for i in range(len(layers))
                for j in range(len(positions))
            ]
        )
        self._checks(result, model, val_d, val_batch_d, val_batch_h, ids, direction, control, layer, scores, ci, cj)

        # (a) ablation on decline prompts and (b) addition on harmless prompts, each with the control
        conditions = {
            "decline": [[], ablation_interventions(info, direction), ablation_interventions(info, control)],
            "harmless": [
                [],
                addition_interventions(layer, cfg.site, direction, cfg.addition_coefficient),
                addition_interventions(layer, cfg.site, control, cfg.addition_coefficient),
            ],
        }
        test_prompts = {"decline": test_d, "harmless": test_h}
        test_requests = {"decline": decline.part("test", cfg.max_test), "harmless": harmless.part("test", cfg.max_test)}
        rate_rows, gen_rows = [], []
        for set_name, items in conditions.items():
            batch = model.tokenize(test_prompts[set_name])
            with torch.no_grad():
                test_scores = model.sweep(
                    batch, items, score_metric(ids, batch), batch_size=max(cfg.sweep_batch_size, batch.size),
                    logits_to_keep=batch.last_positions()[0],
                ).double().cpu()  # fmt: skip
            tokens = generate(model, test_prompts[set_name], items, cfg.max_new_tokens, None, cfg.generate_batch_size)
            if set_name == "decline":
                reference = greedy_reference(model, test_prompts[set_name][0], items[1], cfg.max_new_tokens)
                got = tokens[1][0]
                mismatch = sum(a != b for a, b in zip(got, reference, strict=False)) + abs(len(got) - len(reference))
                result.add_check("cached_generation_matches_reference", float(mismatch), 0.0)
            for c, condition in enumerate(CONDITIONS[set_name]):
                texts = [model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens[c]]
                matches = [matcher.match(t) for t in texts]
                refused = [m is not None for m in matches]
                rate = float(np.mean(refused))
                rate_rows.append(
                    {
                        "set": set_name,
                        "condition": condition,
                        "n": len(texts),
                        "refused": int(sum(refused)),
                        "refusal_rate": rate,
                        "mean_refusal_score": float(test_scores[c].mean()),
                    }
                )
                result.metrics[f"refusal_rate.{set_name}.{condition}"] = rate
                result.metrics[f"refusal_score.{set_name}.{condition}"] = float(test_scores[c].mean())
                if c > 0:
                    shift = float((test_scores[c] - test_scores[0]).mean())
                    result.metrics[f"refusal_score_shift.{set_name}.{condition}"] = shift
                for p, (text, match) in enumerate(zip(texts, matches, strict=True)):
                    gen_rows.append(
                        {
                            "set": set_name,
                            "condition": condition,
                            "prompt_id": p,
                            "request": test_requests[set_name][p],
                            "generation": text,
                            "refused": match is not None,
                            "matched_phrase": match or "",
                            "refusal_score": float(test_scores[c, p]),
                        }
                    )
        rates = pd.DataFrame(rate_rows)
        generations = pd.DataFrame(gen_rows)
        result.tables["refusal_rates"] = rates
        result.tables["generations"] = generations

        result.metrics["chosen.layer"] = float(layer)
        result.metrics["chosen.position"] = float(position)
        result.metrics["chosen.ablation_effect_val"] = float(ablation_effect[ci, cj])
        result.metrics["chosen.addition_effect_val"] = float(addition_effect[ci, cj])
        result.metrics["chosen.harmless_kl_val"] = float(scores.kl[ci, cj])
        result.metrics["refusal_score.val.decline_baseline"] = base_d
        result.metrics["refusal_score.val.harmless_baseline"] = base_h
        result.metrics["direction_norm"] = float(direction.norm())
        result.metrics["control_norm"] = float(control.norm())
        saved = write_direction(
            ctx.data_dir(self.name) / DIRECTION_FILE, direction, hook, model=info.name, position=str(position),
            source="refusal_direction: mean(decline) - mean(harmless), train split",
        )  # fmt: skip

        title = f"{info.name}: refusal direction candidates ({cfg.site}, select_by={cfg.select_by})"
        result.add_figure(
            "candidate_effects",
            plot_candidates,
            result.tables["candidates"],
            layers,
            positions,
            (layer, position),
            title,
            ctx.style,
        )
        result.add_figure(
            "refusal_rates", plot_rates, rates, f"{info.name}: refusal by condition (test split)", ctx.style
        )
        samples = generations.groupby(["set", "condition"], sort=False).head(cfg.n_samples)
        if cfg.n_samples > 0:  # the figure's data: the rows it shows, not every generation
            result.add_figure(
                "generations",
                plot_samples,
                samples,
                cfg.n_samples,
                f"{info.name}: greedy generations (test split)",
                ctx.style,
            )
        baseline_rate = result.metrics["refusal_rate.decline.baseline"]
        finding = (
            f"the model rarely refuses: {baseline_rate:.1%} of the decline test prompts get a refusal phrase; the "
            "method is shown on the refusal score (log-odds of the refusal tokens)"
            if baseline_rate < RARE_REFUSAL
            else f"the model refuses {baseline_rate:.1%} of the decline test prompts"
        )
        result.summary = {
            "finding": finding,
            "chat_template": template_note,
            "hook": hook,
            "position": position,
            "direction_file": str(saved),
            "candidate_layers": layers,
            "positions": positions,
            "select_by": cfg.select_by,
            "selection": selection_note,
            "refusal_tokens": [model.tokenizer.decode([i]) for i in token_ids],
            "refusal_token_notes": token_notes,
            "n_prompts": {
                "train": [len(train_d), len(train_h)],
                "val": [len(val_d), len(val_h)],
                "test": [len(test_d), len(test_h)],
            },
            "refusal_rates": {f"{r.set}.{r.condition}": r.refusal_rate for r in rates.itertuples()},
            "samples": [
                {"set": r.set, "condition": r.condition, "request": r.request, "generation": r.generation}
                for r in samples.itertuples()
            ],
        }
        return result

    @staticmethod
    def _check_lengths(model: HookedModel, prompts: list[str], max_length: int | None, positions: list[int]) -> None:
        """Prompts are never truncated (truncation would cut the post-instruction tokens)."""
        lengths = model.token_lengths(prompts)
        if max_length is not None and max(lengths) > max_length:
            raise AnalyzerError(
                f"refusal_direction: a formatted prompt has {max(lengths)} tokens > max_length={max_length}; raise "
                "max_length (truncation would cut the chat template's post-instruction tokens)"
            )
        if min(lengths) < max(-p for p in positions):
            raise AnalyzerError(
                f"refusal_direction: a prompt has {min(lengths)} tokens, fewer than positions {positions} need"
            )

    def _checks(self, result, model, val_d, val_batch_d, val_batch_h, ids, direction, control, layer, scores, ci, cj):
        cfg: RefusalDirectionConfig = self.cfg
        info = model.info
        ablated, added, kl = scores.ablated, scores.added, scores.kl
        # the sweep's value for the chosen candidate equals plain forwards with the same interventions
        plain_ablated = float(forward_scores(model, val_batch_d, ids, ablation_interventions(info, direction)).mean())
        adds = addition_interventions(layer, cfg.site, direction, cfg.addition_coefficient)
        plain_added = float(forward_scores(model, val_batch_h, ids, adds).mean())
        clean = last_logp(model, val_batch_h)
        ablated_logp = last_logp(model, val_batch_h, ablation_interventions(info, direction))
        plain_kl = float((clean.exp() * (clean - ablated_logp)).sum(-1).mean())
        error = max(
            abs(plain_ablated - float(ablated[ci, cj])),
            abs(plain_added - float(added[ci, cj])),
            abs(plain_kl - float(kl[ci, cj])),
        )
        result.add_check("chosen_sweep_matches_forward", error, SWEEP_TOLERANCE)
        # ablation leaves no component along the direction, at the chosen layer and after the last block
        batch = model.tokenize(val_d[:4])
        hooks = [f"blocks.{layer}.resid_pre", f"blocks.{info.n_layers - 1}.resid_post"]
        with torch.no_grad():
            cache = model.forward(batch, capture=hooks, interventions=ablation_interventions(info, direction)).cache
        unit = direction.float() / direction.float().norm()
        mask = batch.attention_mask.bool()
        worst = 0.0
        for hook in hooks:
            acts = cache[hook].float()[mask]
            worst = max(worst, float((acts @ unit).abs().max()) / float(acts.norm(dim=-1).median()))
        result.add_check("ablation_removes_direction", worst, PROJECTION_TOLERANCE)
        gap = abs(float(control.norm()) - float(direction.norm())) / float(direction.norm())
        result.add_check("random_control_same_norm", gap, 1e-5)


def choose(
    effect: torch.Tensor,
    kl: torch.Tensor,
    addition_effect: torch.Tensor,
    max_kl: float,
    valid: torch.Tensor | None = None,
):
    """(i, j, note): the largest effect among candidates whose ablation keeps the harmless
    next-token distribution (KL <= max_kl) and whose addition raises the refusal score (Arditi
    et al.'s filters); if none passes both, among those passing the KL filter; else among all.
    Candidates outside `valid` (zero directions) are never chosen."""
    valid = torch.ones_like(kl, dtype=torch.bool) if valid is None else valid
    tiers = [
        (
            (kl <= max_kl) & (addition_effect > 0),
            f"chosen among candidates with KL <= {max_kl} and addition effect > 0",
        ),
        (kl <= max_kl, f"no candidate raised the refusal score by addition: chosen among those with KL <= {max_kl}"),
        (valid, f"no candidate kept KL <= {max_kl}: chosen among all candidates"),
    ]
    for allowed, note in tiers:
        allowed = allowed & valid
        if bool(allowed.any()):
            masked = torch.where(allowed, effect, torch.full_like(effect, -torch.inf))
            i, j = divmod(int(torch.argmax(masked)), effect.shape[1])
            return i, j, note
    raise AssertionError("unreachable")


# --- figures ------------------------------------------------------------------------------------
@figure_function
def plot_candidates(table: pd.DataFrame, layers, positions, chosen, title: str, style: FigureStyle):
    """Heatmaps (layer x position) of the two validation effects; the chosen candidate is marked."""
    fig, axes = style.figure(1, 3, scale=(1.6, 1.0))
    table = table.assign(log10_kl=np.log10(table["harmless_kl_ablated"].clip(lower=1e-8)))
    for ax, column, label in (
        (axes[0, 0], "ablation_effect", "ablation: drop of the refusal score (decline)"),
        (axes[0, 1], "addition_effect", "addition: rise of the refusal score (harmless)"),
        (axes[0, 2], "log10_kl", "ablation: log10 KL from clean (harmless)"),
    ):
        grid = table.pivot(index="layer", columns="position", values=column).reindex(index=layers, columns=positions)
        limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
        cmap, low = (style.cmap, None) if column == "log10_kl" else (style.diverging_cmap, -limit)
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=cmap, vmin=low, vmax=None if low is None else limit)
        ax.set_xticks(range(len(positions)), [str(p) for p in positions])
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("position from the prompt end")
        ax.set_ylabel("layer")
        ax.set_title(label, fontsize="small")
        ax.scatter([positions.index(chosen[1])], [layers.index(chosen[0])], marker="o", facecolors="none", color="k")
        fig.colorbar(image, ax=ax, label="log10 nats" if column == "log10_kl" else "log-odds")
    fig.suptitle(title)
    return fig


@figure_function
def plot_rates(rates: pd.DataFrame, title: str, style: FigureStyle):
    """Refusal rate (bars) and mean refusal score (right panel) by condition: real vs random direction."""
    fig, axes = style.figure(1, 2, scale=(1.1, 0.9))
    labels = [f"{r.set}\n{r.condition.replace('_', ' ')}" for r in rates.itertuples()]
    colours = ["0.6" if "baseline" in c else ("tab:gray" if "random" in c else "tab:red") for c in rates.condition]
    axes[0, 0].bar(range(len(rates)), rates.refusal_rate, color=colours)
    for x, r in enumerate(rates.itertuples()):  # counts, so a rate of 0 is visible
        axes[0, 0].annotate(f"{r.refused}/{r.n}", (x, r.refusal_rate), ha="center", va="bottom", fontsize="x-small")
    axes[0, 0].set_ylabel("refusal rate (phrase match)")
    axes[0, 0].set_ylim(0, 1)
    axes[0, 1].bar(range(len(rates)), rates.mean_refusal_score, color=colours)
    axes[0, 1].set_ylabel("mean refusal score (log-odds)")
    for ax in axes[0]:
        ax.set_xticks(range(len(rates)), labels, fontsize="x-small", rotation=30, ha="right")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return fig


@figure_function
def plot_samples(generations: pd.DataFrame, n: int, title: str, style: FigureStyle):
    """The first `n` generations of every condition as text."""
    shown = generations.groupby(["set", "condition"], sort=False).head(n)
    lines = []
    for r in shown.itertuples():
        text = "".join(ch if ch.isprintable() and ch != "\ufffd" else "?" for ch in " ".join(r.generation.split()))
        text = text or "(empty)"
        mark = " [refusal]" if r.refused else ""
        lines.append(textwrap.shorten(f"{r.set}/{r.condition}{mark}: {r.request} -> {text}", 150))
    fig, axes = style.figure(1, 1, scale=(1.4, max(0.6, 0.06 * len(lines))))
    ax = axes[0, 0]
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=6, transform=ax.transAxes)
    ax.set_title(title)
    return fig


ANALYZERS = [RefusalDirection]
