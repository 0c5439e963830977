"""direct_logit_attribution: how much each component writes the answer straight into the logits.

In a pre-norm transformer the final residual stream is a sum: the embedding, every attention
sublayer's output and every MLP's output (`resid_final = embed + sum_L attn.out_L + mlp.out_L`),
and each attention output is a sum over heads, `attn.out_L = sum_h z_h @ W_O[h] + b_O`. The
final norm divides by a normaliser computed from the whole sum (`final.scale`); once that scale
is *frozen* at its value in this run, the norm is linear (LayerNorm also centres each
component, which is linear too), and so is the unembedding. The logit difference
logit(target) - logit(contrast) therefore splits exactly into one term per component:

    diff = embed.g + sum_{L,h} (z_{L,h} @ W_O[L,h]).g + sum_L b_O[L].g + sum_L mlp.out_L.g
           + beta.u + (b_U[target] - b_U[contrast])

where u = W_U[target] - W_U[contrast], g = N^T u is u pulled back through the frozen final norm
N (the gradient of the difference with respect to the residual stream at fixed scale), beta the
final norm's bias and b_U the unembedding's bias. This is the *direct* effect of each component
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et al. 2022 use
it to find IOI's name-mover heads): what it writes that no later component reads. Indirect
effects through later layers are what ablation and patching measure.

Exactness is checked, not assumed: the terms must add up to the model's own logit difference
(<= 1e-4 relative), and the heads of each layer to the captured `attn.out`. Everything comes
from ONE forward pass capturing `embed`, every `blocks.L.attn.z`, `attn.out`, `mlp.out` and
`final.scale`; the sums are taken in float64.

Refused before weights load: encoders (no unembedding) and post-norm models (the residual is
renormalised after every sublayer, so it is not a sum of component outputs). Where heads do not
sum to `attn.out` (`heads_sum_to_attn_out` False, e.g. Gemma-2's post-attention norm) each
layer's attention is attributed as a whole (still exact) and per-head results are left out.
Where logits are soft-capped (Gemma-2) the attribution explains the logit *before* the cap,
which is linear in the residual stream; the cap is monotone, so signs and rankings carry over.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel, ModelInfo, TokenBatch
from interpsuite.results import Result

from .dla_plots import plot_head_contributions, plot_layer_contributions, plot_position_contributions
from .lens import decode_ids
from .pairs import IOI_NAMES, check_pair_source, load_pairs

#: relative tolerance of the two exactness checks (fp32 activations summed in float64)
SUM_TOLERANCE = 1e-4
POSITIONS = ("last", "all")


# --- the engine (Python API) -------------------------------------------------------------------
def check_supported(info: ModelInfo, what: str = "direct_logit_attribution") -> None:
    """Refuse, from the ModelInfo flags alone, models whose logits do not split into direct terms."""
    if not info.is_causal:
        raise ConfigError(
            f"{what}: {info.name} is an encoder without an unembedding, so there are no next-token logits to "
            "attribute; use a causal LM (e.g. model=smollm2)"
        )
    if info.post_norm:
        raise ConfigError(
            f"{what}: {info.name} is post-norm (the residual is renormalised after every sublayer), so its final "
            "residual stream is not a sum of component outputs; direct logit attribution needs a pre-norm model"
        )


def capture_names(info: ModelInfo) -> list[str]:
    """The hook points one attribution pass reads."""
    names = ["embed"]
    for layer in range(info.n_layers):
        if info.heads_sum_to_attn_out:
            names.append(f"blocks.{layer}.attn.z")
        names += [f"blocks.{layer}.attn.out", f"blocks.{layer}.mlp.out"]
    if info.has_final_norm:
        names.append("final.scale")
    if info.logit_softcap is not None:
        names.append("final")  # the pre-cap logits are lm_head(final)
    return names


@dataclass
class DirectLogitAttribution:
    """Direct contributions to logit(target) - logit(contrast) at every position of a batch.

    All tensors are float64 on the CPU, [B, T] per component ([B, T, n_layers] per layer,
    [B, T, n_layers, n_heads] per head); padding positions are computed but `mask` is False
    there. `attn` is each layer's whole attention sublayer (its heads plus `attn_bias` where
    `heads` exists, else read from `attn.out`). `logit_diff` is the model's own difference (the
    pre-cap logits where the model soft-caps them).
    """

    target_ids: torch.Tensor
    contrast_ids: torch.Tensor | None
    mask: torch.Tensor
    embed: torch.Tensor
    attn: torch.Tensor
    attn_bias: torch.Tensor
    heads: torch.Tensor | None
    mlp: torch.Tensor
    final_norm_bias: torch.Tensor
    unembed_bias: torch.Tensor
    logit_diff: torch.Tensor
    #: max over layers of |sum_h z_h W_O[h] + b_O - attn.out| / max |attn.out| (real tokens); None without heads
    heads_vs_attn_out_rel_err: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bias(self) -> torch.Tensor:
        """The terms no component owns: the final norm's bias and the unembedding's bias."""
        return self.final_norm_bias + self.unembed_bias

    @property
    def total(self) -> torch.Tensor:
        """The sum of every direct term; equals `logit_diff` up to rounding."""
        return self.embed + self.attn.sum(-1) + self.mlp.sum(-1) + self.bias

    def relative_error(self) -> torch.Tensor:
        """|total - logit_diff| / max(1, |logit_diff|) per position (0 at padding)."""
        err = (self.total - self.logit_diff).abs() / self.logit_diff.abs().clamp_min(1.0)
        return torch.where(self.mask, err, torch.zeros_like(err))

    def sum_rel_err(self) -> float:
        """The sum check: max relative error over the real tokens."""
        return float(self.relative_error().max())


def _per_position(ids: torch.Tensor | Sequence[int] | None, batch: TokenBatch, device) -> torch.Tensor | None:
    """Token ids per row [B] or per position [B, T] -> [B, T] long on `device`."""
    if ids is None:
        return None
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    shape = tuple(batch.input_ids.shape)
    if ids.ndim == 1 and ids.shape[0] == shape[0]:
        return ids[:, None].expand(shape)
    if tuple(ids.shape) == shape:
        return ids
    raise ConfigError(f"direct_logit_attribution: token ids of shape {tuple(ids.shape)}; give [batch] or {shape}")


def residual_direction(model: HookedModel, u: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """g = N^T u: the unembedding direction pulled back through the frozen final norm N.

    The frozen norm is linear in its input (the model's adapter applies it with a fixed scale,
    for whatever norm formula the architecture uses), so its transpose is one vector-Jacobian
    product; then the direct term of any component c is simply c . g.
    """
    if scale is None:
        return u.double()
    # on the norm's device (its weight lives there; under a device map it need not be lm_head's)
    x = torch.zeros(u.shape, dtype=torch.float32, device=scale.device, requires_grad=True)
    with torch.enable_grad():
        y = model.adapter.frozen_final_norm(x, scale)
        (g,) = torch.autograd.grad(y, x, grad_outputs=u.to(y.device, y.dtype))
    return g.detach().to(u.device, torch.float64)


def _dot(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """a . g over d_model in float64, on g's device (components may sit on other devices)."""
    return (a.to(g.device, torch.float64) * g).sum(-1)


def direct_logit_attribution(
    model: HookedModel,
    batch: TokenBatch,
    target_ids: torch.Tensor | Sequence[int] | None = None,
    contrast_ids: torch.Tensor | Sequence[int] | None = None,
) -> DirectLogitAttribution:
    """Direct logit attribution of every position of `batch`, from one forward pass.

    `target_ids` and `contrast_ids` are token ids per row ([B]: the same target at every
    position) or per position ([B, T]). `target_ids=None` takes the model's own top-1 prediction
    at each position; `contrast_ids=None` attributes the target's logit itself (no difference).
    """
    info = model.info
    check_supported(info, "direct_logit_attribution")
    adapter = model.adapter
    with torch.no_grad():
        out = model.forward(batch, capture=capture_names(info))
    logits, cache = out.output, out.cache
    device = logits.device
    target = _per_position(target_ids, batch, device)
    if target is None:
        target = logits.argmax(-1)
    contrast = _per_position(contrast_ids, batch, device)
    notes: list[str] = []
    with torch.no_grad():
        w_u = adapter.unembed_matrix()
        u = w_u[target.to(w_u.device)].to(device, torch.float64)
        if contrast is not None:
            u = u - w_u[contrast.to(w_u.device)].to(device, torch.float64)
        scale = cache["final.scale"] if info.has_final_norm else None
        g = residual_direction(model, u, scale)

        if info.logit_softcap is not None:
            pre_cap = adapter.unembed_module()(cache["final"]).to(device)
            notes.append(
                f"{info.name} soft-caps its logits (cap {info.logit_softcap:g}): the attribution explains the logit "
                "difference before the cap, which is linear in the residual stream"
            )
        else:
            pre_cap = logits
        # gather before widening: [B, T, vocab] in float64 would be the largest tensor of the pass
        actual = pre_cap.gather(-1, target[..., None])[..., 0].double()
        if contrast is not None:
            actual = actual - pre_cap.gather(-1, contrast[..., None])[..., 0].double()
        del pre_cap

        mask = batch.attention_mask.bool().to(device)
        embed = _dot(cache["embed"], g)
        attn, attn_bias, mlp, heads = [], [], [], []
        worst = 0.0
        for layer in range(info.n_layers):
            attn_out = cache[f"blocks.{layer}.attn.out"]
            mlp.append(_dot(cache[f"blocks.{layer}.mlp.out"], g))
            if not info.heads_sum_to_attn_out:
                attn.append(_dot(attn_out, g))
                attn_bias.append(torch.zeros_like(embed))
                continue
            w_o, b_o = adapter.head_output_weights(layer)
            w_o = w_o.to(device, torch.float64)
            z = cache[f"blocks.{layer}.attn.z"].to(device, torch.float64)  # [B, T, H, d_head]
            per_head = (z * torch.einsum("hdm,btm->bthd", w_o, g)).sum(-1)  # [B, T, H]
            bias_term = _dot(b_o, g) if b_o is not None else torch.zeros_like(embed)
            heads.append(per_head)
            attn_bias.append(bias_term)
            attn.append(per_head.sum(-1) + bias_term)
            rebuilt = z.flatten(2) @ w_o.flatten(0, 1)
            if b_o is not None:
                rebuilt = rebuilt + b_o.to(device, torch.float64)
            reference = attn_out.to(device, torch.float64)[mask]
            err = float((rebuilt[mask] - reference).abs().max()) / max(float(reference.abs().max()), 1e-30)
            worst = max(worst, err)
        beta = adapter.final_norm_bias() if info.has_final_norm else None
        final_norm_bias = _dot(beta, u) if beta is not None else torch.zeros_like(embed)
        b_u = getattr(adapter.unembed_module(), "bias", None)
        if b_u is not None:
            b_u = b_u.to(device, torch.float64)
            unembed_bias = b_u[target]
            if contrast is not None:
                unembed_bias = unembed_bias - b_u[contrast]
        else:
            unembed_bias = torch.zeros_like(embed)
    if not info.heads_sum_to_attn_out:
        notes.append(
            f"{info.name}: the heads' outputs do not sum to attn.out (e.g. a norm after attention), so attention is "
            "attributed per layer only (exact); per-head direct attribution is not reported"
        )

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64)

    return DirectLogitAttribution(
        target_ids=target.cpu(),
        contrast_ids=None if contrast is None else contrast.cpu(),
        mask=mask.cpu(),
        embed=cpu(embed),
        attn=cpu(torch.stack(attn, -1)),
        attn_bias=cpu(torch.stack(attn_bias, -1)),
        heads=cpu(torch.stack(heads, 2)) if heads else None,
        mlp=cpu(torch.stack(mlp, -1)),
        final_norm_bias=cpu(final_norm_bias),
        unembed_bias=cpu(unembed_bias),
        logit_diff=cpu(actual),
        heads_vs_attn_out_rel_err=worst if info.heads_sum_to_attn_out else None,
        notes=notes,
    )


# --- targets ----------------------------------------------------------------------------------
def ioi_names(text: str) -> tuple[str, str] | None:
    """(indirect object, subject) of an IOI prompt: two known names, the subject mentioned twice,
    the indirect object once ("When Mary and John went to the store, John gave a drink to");
    None for any other text."""
    counts = Counter(w for w in re.findall(r"[A-Za-z]+", text) if w in IOI_NAMES)
    if len(counts) != 2:
        return None
    (subject, n_subject), (io, n_io) = counts.most_common()
    return (io, subject) if (n_subject, n_io) == (2, 1) else None


@dataclass
class DLAConfig:
    target: str | None = None  # one token at every text, e.g. " Mary"
    contrast: str | None = None  # one token subtracted: logit(target) - logit(contrast)
    targets: list[str] | None = None  # per-text targets, aligned with the run's texts
    contrasts: list[str] | None = None  # per-text contrasts
    pairs: str | None = None  # ioi | factual | .jsonl: the clean prompts, target = answer, contrast = wrong
    n_pairs: int = 8  # prompts taken from `pairs`
    positions: str = "last"  # last (each text's last real token) | all (every real token)
    allow_first_piece: bool = False  # multi-piece targets use their first piece
    top_k: int = 10  # heads in the summary, metrics and framed in the heatmap
    seed: int | None = None  # pair sampling (null: the run's seed)


@dataclass
class Plan:
    """What one run attributes: the texts, their target and contrast ids, and how they were chosen."""

    texts: list[str]
    targets: list[int] | None
    contrasts: list[int] | None
    target_label: str
    source: str
    notes: list[str] = field(default_factory=list)


class DirectLogitAttributionAnalyzer(Analyzer):
    name = "direct_logit_attribution"
    family = "mechanistic"
    description = "Exact direct contribution of the embedding, every head and every MLP to a logit difference"
    Config = DLAConfig
    requires_causal_lm = True

    def validate(self, info: ModelInfo, cfg: DLAConfig) -> None:
        what = self.name
        check_supported(info, what)
        if cfg.positions not in POSITIONS:
            raise ConfigError(f"{what}: positions={cfg.positions!r}; choose one of {', '.join(POSITIONS)}")
        if cfg.target is not None and cfg.targets is not None:
            raise ConfigError(f"{what}: give target (one token for every text) or targets (one per text), not both")
        if cfg.contrast is not None and cfg.contrasts is not None:
            raise ConfigError(f"{what}: give contrast (one token) or contrasts (one per text), not both")
        if cfg.pairs is not None:
            given = [o for o in ("target", "contrast", "targets", "contrasts") if getattr(cfg, o) is not None]
            if given:
                raise ConfigError(
                    f"{what}: pairs={cfg.pairs!r} brings its own answers (target) and wrong answers (contrast); "
                    f"drop {', '.join(given)} or drop pairs"
                )
            check_pair_source(cfg.pairs, what)
        for option in ("target", "contrast"):
            if getattr(cfg, option) == "":
                raise ConfigError(f"{what}: {option} is an empty string; give one token such as ' Mary', or null")
        for option in ("targets", "contrasts"):
            values = getattr(cfg, option)
            if values is not None and (not values or any(v == "" for v in values)):
                raise ConfigError(f"{what}: {option} must be a non-empty list of tokens such as ' Mary'")
        if cfg.n_pairs < 1 or cfg.top_k < 1:
            raise ConfigError(f"{what}: n_pairs ({cfg.n_pairs}) and top_k ({cfg.top_k}) must be >= 1")

    # --- what to attribute ------------------------------------------------------------------
    def plan(self, ctx: RunContext) -> Plan:
        cfg: DLAConfig = self.cfg
        model = ctx.model
        what = self.name

        def ids(tokens: Sequence[str], option: str) -> list[int]:
            return [model.token_id(t, f"{what}: {option}", cfg.allow_first_piece)[0] for t in tokens]

        if cfg.pairs is not None:
            seed = ctx.seed if cfg.seed is None else cfg.seed
            pairs = load_pairs(cfg.pairs, model.tokenizer, cfg.n_pairs, seed)
            return Plan(
                [p.clean for p in pairs],
                ids([p.answer for p in pairs], "pair answer"),
                ids([p.wrong for p in pairs], "pair wrong answer"),
                "answer - wrong answer of each pair" + (" (indirect object - subject)" if cfg.pairs == "ioi" else ""),
                f"{cfg.pairs}: {len(pairs)} clean prompts",
            )
        texts = list(ctx.inputs.texts)
        n = len(texts)
        notes: list[str] = []

        def per_text(single: str | None, many: list[str] | None, option: str) -> list[int] | None:
            if single is not None:
                return ids([single], option) * n
            if many is None:
                return None
            if len(many) != n:
                raise ConfigError(
                    f"{what}: {option} has {len(many)} entries but the run has {n} texts; give one per text"
                )
            return ids(many, option)

        targets = per_text(cfg.target, cfg.targets, "target" if cfg.target is not None else "targets")
        contrasts = per_text(cfg.contrast, cfg.contrasts, "contrast" if cfg.contrast is not None else "contrasts")
        if targets is not None or contrasts is not None:
            return Plan(texts, targets, contrasts, self.label(), ctx.inputs.source)
        extra = ctx.inputs.extra.get("targets")
        if extra is not None and all(t is not None for t in extra):
            return Plan(
                texts, ids(extra, "data target"), None, "each text's target from the data file", ctx.inputs.source
            )
        if extra is not None:
            notes.append("the data file gives targets for some texts only: they are not used")
        found = [ioi_names(t) for t in texts]
        if all(f is not None for f in found):
            try:
                io = [model.token_id(f" {f[0]}", what)[0] for f in found]
                subject = [model.token_id(f" {f[1]}", what)[0] for f in found]
            except ConfigError:
                notes.append("IOI prompts, but the names are not single tokens: attributing the top-1 instead")
            else:
                return Plan(texts, io, subject, "indirect object - subject (IOI prompts)", ctx.inputs.source, notes)
        return Plan(texts, None, None, "the model's top-1 prediction at each position", ctx.inputs.source, notes)

    def label(self) -> str:
        """What is attributed, in words, for titles and the summary."""
        cfg: DLAConfig = self.cfg
        target = repr(cfg.target) if cfg.target is not None else "per-text targets" if cfg.targets else "top-1"
        if cfg.contrast is not None:
            return f"{target} - {cfg.contrast!r}"
        return f"{target} - per-text contrasts" if cfg.contrasts else target

    # --- the run ----------------------------------------------------------------------------
    def estimate(self, info: ModelInfo, cfg: DLAConfig, workload):
        """One pass per batch capturing embed and every layer's z, attn.out and mlp.out (all logits),
        then per layer the heads' direct terms in float64 (B x T x d_model^2 twice)."""
        if cfg.pairs is not None:
            seed = workload.seed if cfg.seed is None else cfg.seed
            pairs = load_pairs(cfg.pairs, workload.model.tokenizer, cfg.n_pairs, seed)
            lengths = workload.token_lengths([p.clean for p in pairs])
        else:
            lengths = workload.lengths
        cost = workload.forward_batches(lengths, capture=capture_names(info))
        tokens = sum(max(b) * len(b) for b in workload.batches(lengths))
        f64 = 2  # float64 arithmetic runs at about half the float32 rate
        cost = cost + workload.macs(f64 * 2 * tokens * info.n_layers * info.d_model * info.n_heads * info.d_head)
        widest = max(lengths, default=0) * min(workload.batch_size, len(lengths))
        cost = cost.hold(8 * widest * (info.n_heads * info.d_head + 3 * info.d_model + info.n_layers * info.n_heads))
        return cost + workload.figures(3, 6) + workload.table(sum(lengths), 14)

    def run(self, ctx: RunContext) -> Result:
        cfg: DLAConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        check_supported(info, self.name)
        plan = self.plan(ctx)
        n_batches = (len(plan.texts) + ctx.batch_size - 1) // ctx.batch_size
        batches = model.batches(plan.texts, ctx.batch_size, ctx.max_length)
        keys = ("embed", "attn", "attn_bias", "mlp", "fnb", "ub", "actual", "total", "heads")
        picked: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        position_frames: list[pd.DataFrame] = []
        first_text_layers: list[dict] = []
        sum_err, heads_err, notes = 0.0, 0.0, list(plan.notes)
        for batch in ctx.progress(batches, self.name, n_batches):
            start = batch.text_ids[0]
            rows = slice(start, start + batch.size)
            targets = None if plan.targets is None else plan.targets[rows]
            contrasts = None if plan.contrasts is None else plan.contrasts[rows]
            dla = direct_logit_attribution(model, batch, targets, contrasts)
            sum_err = max(sum_err, dla.sum_rel_err())
            heads_err = max(heads_err, dla.heads_vs_attn_out_rel_err or 0.0)
            notes += [n for n in dla.notes if n not in notes]
            evaluated = dla.mask.clone()
            if cfg.positions == "last":
                evaluated[:] = False
                evaluated[torch.arange(batch.size), batch.last_index.cpu()] = True
            for key, tensor in (
                ("embed", dla.embed),
                ("attn", dla.attn),
                ("attn_bias", dla.attn_bias),
                ("mlp", dla.mlp),
                ("fnb", dla.final_norm_bias),
                ("ub", dla.unembed_bias),
                ("actual", dla.logit_diff),
                ("total", dla.total),
            ):
                picked[key].append(tensor[evaluated].numpy())
            if dla.heads is not None:
                picked["heads"].append(dla.heads[evaluated].numpy())
            position_frames.append(self.position_rows(batch, dla, evaluated))
            if start == 0:
                first_text_layers = [
                    {"position": p, "token": batch.tokens[0][p], "layer": layer, "attn": float(dla.attn[0, p, layer]),
                     "mlp": float(dla.mlp[0, p, layer])}
                    for p in range(int(batch.lengths[0]))
                    for layer in range(info.n_layers)
                ]  # fmt: skip
        data = {k: np.concatenate(v) for k, v in picked.items() if v}
        positions = pd.concat(position_frames, ignore_index=True)
        return self.report(ctx, plan, data, positions, first_text_layers, sum_err, heads_err, notes)

    @staticmethod
    def position_rows(batch: TokenBatch, dla: DirectLogitAttribution, evaluated: torch.Tensor) -> pd.DataFrame:
        """Every real position of the batch: tokens, ids, the terms by kind, the model's value."""
        mask = dla.mask
        rows, positions = mask.nonzero(as_tuple=True)
        frame = pd.DataFrame(
            {
                "text_id": [batch.text_ids[r] for r in rows.tolist()],
                "position": positions.numpy(),
                "token": [batch.tokens[r][p] for r, p in zip(rows.tolist(), positions.tolist(), strict=True)],
                "target_id": dla.target_ids[mask].numpy(),
                "contrast_id": dla.contrast_ids[mask].numpy() if dla.contrast_ids is not None else -1,
                "evaluated": evaluated[mask].numpy(),
                "logit_diff": dla.logit_diff[mask].numpy(),
                "embed": dla.embed[mask].numpy(),
                "attn": dla.attn.sum(-1)[mask].numpy(),
                "mlp": dla.mlp.sum(-1)[mask].numpy(),
                "bias": dla.bias[mask].numpy(),
                "total": dla.total[mask].numpy(),
                "rel_err": dla.relative_error()[mask].numpy(),
            }
        )
        return frame if dla.contrast_ids is not None else frame.drop(columns="contrast_id")

    def report(self, ctx, plan: Plan, data, positions, first_text_layers, sum_err, heads_err, notes) -> Result:
        cfg: DLAConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        result = Result()
        n_eval = len(data["actual"])
        mean_diff = float(data["actual"].mean())
        diff_word = "logit difference" if plan.contrasts is not None else "logit"

        layers = pd.DataFrame(
            {
                "layer": np.arange(info.n_layers),
                "attn": data["attn"].mean(0),
                "attn_bias": data["attn_bias"].mean(0),
                "mlp": data["mlp"].mean(0),
            }
        )
        layers["cumulative"] = float(data["embed"].mean()) + (layers["attn"] + layers["mlp"]).cumsum()
        result.tables["layers"] = layers
        terms = {
            "embed": data["embed"].mean(),
            "attn": data["attn"].sum(1).mean(),
            "mlp": data["mlp"].sum(1).mean(),
            "final_norm_bias": data["fnb"].mean(),
            "unembed_bias": data["ub"].mean(),
        }
        result.tables["terms"] = pd.DataFrame(
            [{"term": k, "mean": float(v), "fraction": float(v) / mean_diff if mean_diff else np.nan}
             for k, v in {**terms, "total": data["total"].mean(), "logit_diff": mean_diff}.items()]
        )  # fmt: skip

        positions.insert(4, "target", decode_ids(model, positions["target_id"]))
        if "contrast_id" in positions:
            positions.insert(6, "contrast", decode_ids(model, positions["contrast_id"]))
        result.tables["positions"] = positions
        result.tables["position_layers"] = pd.DataFrame(first_text_layers)

        top_heads: list[dict] = []
        if "heads" in data:
            mean = data["heads"].mean(0)  # [L, H]
            std = data["heads"].std(0)
            heads = pd.DataFrame(
                [
                    {"layer": layer, "head": h, "mean": float(mean[layer, h]), "std": float(std[layer, h])}
                    for layer in range(info.n_layers)
                    for h in range(info.n_heads)
                ]
            )
            heads["fraction"] = heads["mean"] / mean_diff if mean_diff else np.nan
            heads["rank"] = heads["mean"].abs().rank(ascending=False, method="first").astype(int)
            result.tables["heads"] = heads
            best = heads.sort_values("rank").head(cfg.top_k)
            top_heads = [
                {"head": f"L{int(r.layer)}H{int(r.head)}", "contribution": round(float(r.mean), 4),
                 "fraction": round(float(r.fraction), 4)}
                for r in best.itertuples()
            ]  # fmt: skip
            for r in best.itertuples():
                result.metrics[f"heads.L{int(r.layer)}H{int(r.head)}"] = float(r.mean)
            framed = [(int(r.layer), int(r.head)) for r in best.itertuples()]
            result.add_figure(
                "heads", plot_head_contributions,
                mean, framed, f"{info.name}: direct contribution of each head to the {diff_word}\n{plan.target_label}",
                f"mean direct contribution ({n_eval} positions)", ctx.style,
            )  # fmt: skip
            result.add_check("heads_sum_to_attn_out_rel_err", heads_err, SUM_TOLERANCE)

        result.add_check("components_sum_to_logit_diff_rel_err", sum_err, SUM_TOLERANCE)
        result.add_figure(
            "layers", plot_layer_contributions,
            layers, float(terms["embed"]), mean_diff,
            f"{info.name}: direct contribution by layer to the {diff_word}\n{plan.target_label}", ctx.style,
        )  # fmt: skip
        first = positions[positions.text_id == positions.text_id.min()]
        result.add_figure(
            "positions", plot_position_contributions,
            first, result.tables["position_layers"],
            f"{info.name}: direct contributions at every position of text {int(first.text_id.iloc[0])}", ctx.style,
        )  # fmt: skip

        result.metrics["logit_diff.mean"] = mean_diff
        if plan.contrasts is not None:
            result.metrics["logit_diff.positive_fraction"] = float((data["actual"] > 0).mean())
        for key, value in terms.items():
            result.metrics[f"direct.{key}"] = float(value)
        result.metrics["positions"] = float(n_eval)
        result.summary = {
            "target": plan.target_label,
            "source": plan.source,
            "positions": cfg.positions,
            "evaluated_positions": n_eval,
            "mean_" + diff_word.replace(" ", "_"): round(mean_diff, 6),
            "terms": {k: round(float(v), 6) for k, v in terms.items()},
            "top_heads": top_heads,
            "per_head": "heads" in data,
            "notes": notes,
        }
        return result


ANALYZERS = [DirectLogitAttributionAnalyzer]
