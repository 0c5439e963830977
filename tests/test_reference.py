"""Reference tests: every adapter's hook points against Hugging Face's own eager computation.

For each architecture (tiny random models; SmolLM2 when `slow` tests run) the wrapped model is
compared with a *separate* instance of the same class, built from the config with
`attn_implementation="eager"` and loaded with the same weights (never a deepcopy of the
wrapped model, which carries interpsuite's listeners). Norm weights are perturbed first, so a
norm formula that ignored its weight (or Gemma's `1 + weight`) would show. The batch is
right-padded, texts of different lengths, longer than the tiny sliding windows (4 tokens).

What is checked, per model: the pattern equals `output_attentions` at real queries (1e-6);
softmax(scores) is the pattern and disallowed scores are -inf (the allowed set is rebuilt
here from padding, causality and sliding windows); q.k^T * scaling (GQA expanded, soft-capped
for Gemma-2) gives the scores; the residual decomposes as documented (sequential pre-norm,
parallel, post-norm); outputs and hidden states equal Hugging Face's; norm scales are the
normalisers of the norm inputs, freezing them changes nothing and doubling them does; and
interventions on q, k, v, scores, pattern, resid_mid, mlp.pre/up act where they should.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import describe_model
from interpsuite.models.adapters import adapter_for
from interpsuite.models.hooked import HookedModel, TokenBatch
from interpsuite.models.sources import _tiny_config, byte_tokenizer, load_weights
from tests.conftest import TINY_ARCH

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Sliding windows are short.", "Hi there you"]
#: the seven tiny models plus GPT-NeoX with use_parallel_residual=False
CASES = (*TINY_ARCH, "tiny_neox_sequential")
LAYER_NORM_ARCHITECTURES = ("gpt2", "bert", "gpt_neox", "stablelm")
PATTERN_TOL = 1e-6


@dataclass
class Pair:
    """A wrapped model and its eager Hugging Face twin (same weights), with one batch."""

    model: HookedModel
    reference: nn.Module
    batch: TokenBatch
    deviations: dict[str, float] = field(default_factory=dict)

    @property
    def config(self):
        return self.reference.config

    @property
    def real(self) -> torch.Tensor:
        return self.batch.attention_mask.bool()

    def record(self, what: str, value: float) -> float:
        self.deviations[what] = max(self.deviations.get(what, 0.0), float(value))
        return float(value)


def perturb_norms(model: nn.Module, seed: int = 1, size: float = 0.2) -> None:
    """Move every norm's weight and bias off their initial values (1/0; Gemma's 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for parameter in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(parameter, torch.Tensor):
                    parameter.add_(size * torch.randn(parameter.shape, generator=generator))


def eager_twin(hf_model: nn.Module) -> nn.Module:
    """A fresh instance of the same class with Hugging Face's eager attention and the same weights."""
    config = copy.deepcopy(hf_model.config)
    config._attn_implementation = "eager"
    twin = type(hf_model)._from_config(config, dtype=next(hf_model.parameters()).dtype)
    twin.load_state_dict(hf_model.state_dict())
    return twin.eval()


def make_pair(hf_model: nn.Module, tokenizer, texts=TEXTS) -> Pair:
    reference = eager_twin(hf_model)
    model = HookedModel(hf_model, tokenizer)
    return Pair(model, reference, model.tokenize(texts))


def build_case(name: str) -> Pair:
    if name == "tiny_neox_sequential":
        config = _tiny_config("tiny_neox")
        config.use_parallel_residual = False
        from transformers import AutoModelForCausalLM

        with torch.random.fork_rng():
            torch.manual_seed(0)
            hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
        tokenizer = byte_tokenizer()
    else:
        loaded = load_weights(name)
        hf_model, tokenizer = loaded.hf_model, loaded.tokenizer
        assert hf_model.config._attn_implementation == adapter_for(hf_model.config.model_type).attn_implementation
    perturb_norms(hf_model)
    return make_pair(hf_model, tokenizer)


# --- what the model should do, rebuilt here from its config -----------------------------
def sliding_window(config, layer: int) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # Mistral: every layer
        return window
    return window if layer_types[layer] == "sliding_attention" else None


def allowed_keys(pair: Pair, layer: int) -> torch.Tensor:
    """[b, 1, q, k]: real keys, not in the future (causal), inside the window (sliding layers)."""
    real = pair.real
    b, pos = real.shape
    allowed = real[:, None, None, :].expand(b, 1, pos, pos)
    q = torch.arange(pos)[:, None]
    k = torch.arange(pos)[None, :]
    if pair.model.info.is_causal:
        allowed = allowed & (k <= q)
    window = sliding_window(pair.config, layer)
    if window is not None:
        allowed = allowed & (q - k < window)
    return allowed


def score_scaling(pair: Pair) -> float:
    scalar = getattr(pair.config, "query_pre_attn_scalar", None)  # Gemma-2
    return (scalar if scalar is not None else pair.model.info.d_head) ** -0.5


def attention_softcap(pair: Pair) -> float | None:
    return getattr(pair.config, "attn_logit_softcapping", None)


def norm_scale(pair: Pair, x: torch.Tensor) -> torch.Tensor:
    config = pair.config
    eps = next(
        getattr(config, a) for a in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon") if hasattr(config, a)
    )
    x = x.double()
    if pair.model.info.architecture in LAYER_NORM_ARCHITECTURES:
        variance = x.var(-1, keepdim=True, unbiased=False)
    else:
        variance = x.pow(2).mean(-1, keepdim=True)
    return torch.sqrt(variance + eps)


def real_queries(tensor: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Rows [n, k] of a [b, h, q, k] tensor at real query positions."""
    b, h, q, _ = tensor.shape
    return tensor[real[:, None, :].expand(b, h, q)]


def hf_outputs(pair: Pair):
    with torch.no_grad():
        return pair.reference(
            input_ids=pair.batch.input_ids,
            attention_mask=pair.batch.attention_mask,
            output_attentions=True,
            output_hidden_states=True,
        )


def final_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def block_names(pair: Pair, *sites: str) -> list[str]:
    return [f"blocks.{layer}.{site}" for layer in range(pair.model.info.n_layers) for site in sites]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def deviation(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest expected magnitude (at least 1).

    Tiny models' values are O(1), so this is the absolute error there; SmolLM2's residual
    stream and logits reach tens to hundreds, where fp32 rounding differences between the
    SDPA and eager paths grow with the values."""
    scale = max(1.0, float(expected.double().abs().max()))
    return max_abs(ours, expected) / scale


# --- the checks (each returns nothing; deviations are recorded on the pair) --------------
def check_pattern_equals_hf_eager(pair: Pair) -> None:
    cache = pair.model.forward(pair.batch, capture=block_names(pair, "attn.pattern")).cache
    attentions = hf_outputs(pair).attentions
    assert len(attentions) == pair.model.info.n_layers
    for layer in range(pair.model.info.n_layers):
        ours = real_queries(cache[f"blocks.{layer}.attn.pattern"], pair.real)
        theirs = real_queries(attentions[layer], pair.real)
        assert ours.shape == theirs.shape
        worst = pair.record("pattern vs HF eager", deviation(ours, theirs))
        assert worst <= PATTERN_TOL, f"layer {layer}: pattern differs from HF eager by {worst:.3g}"


def check_scores_softmax_to_pattern(pair: Pair) -> None:
    cache = pair.model.forward(pair.batch, capture=block_names(pair, "attn.scores", "attn.pattern")).cache
    for layer in range(pair.model.info.n_layers):
        scores = cache[f"blocks.{layer}.attn.scores"]
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        allowed = allowed_keys(pair, layer).expand_as(scores)
        query_real = pair.real[:, None, :, None].expand_as(scores)
        # disallowed keys of real queries are exactly -inf; allowed ones finite
        assert bool(torch.isneginf(scores[~allowed & query_real]).all()), f"layer {layer}: a masked score is not -inf"
        assert bool(torch.isfinite(scores[allowed & query_real]).all()), f"layer {layer}: an allowed score is -inf"
        softmax = torch.softmax(scores, dim=-1)
        worst = pair.record(
            "softmax(scores) vs pattern", deviation(real_queries(softmax, pair.real), real_queries(pattern, pair.real))
        )
        assert worst <= 1e-6
        window = sliding_window(pair.config, layer)
        if window is not None:  # the batch reaches past the window, so the window is exercised
            assert int(pair.real.sum(1).max()) > window


def check_q_dot_k_gives_scores(pair: Pair) -> None:
    info = pair.model.info
    cache = pair.model.forward(pair.batch, capture=block_names(pair, "attn.q", "attn.k", "attn.scores")).cache
    group = info.n_heads // info.n_kv_heads
    cap = attention_softcap(pair)
    for layer in range(info.n_layers):
        q = cache[f"blocks.{layer}.attn.q"]  # [b, pos, head, d]
        k = cache[f"blocks.{layer}.attn.k"]  # [b, pos, kv_head, d]
        assert q.shape[2] == info.n_heads and k.shape[2] == info.n_kv_heads
        k = k[:, :, torch.arange(info.n_heads) // group]  # query head h reads KV head h // group
        scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * score_scaling(pair)
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        captured = cache[f"blocks.{layer}.attn.scores"]
        allowed = (allowed_keys(pair, layer) & pair.real[:, None, :, None]).expand_as(captured)
        worst = pair.record("q.k^T vs scores", deviation(scores[allowed], captured[allowed]))
        assert worst <= 1e-5, f"layer {layer}: q.k^T * scaling differs from scores by {worst:.3g}"


def _reference_inputs(pair: Pair, modules: dict[str, nn.Module], outputs: bool = False) -> dict[str, torch.Tensor]:
    """First input (or first output) of some modules of the reference model, in one HF run."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in modules.items():
        if outputs:

            def hook(module, args, output, name=name):
                seen[name] = output[0] if isinstance(output, tuple) else output

            handles.append(module.register_forward_hook(hook))
        else:

            def pre_hook(module, args, kwargs, name=name):
                seen[name] = args[0] if args else kwargs["hidden_states"]

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        hf_outputs(pair)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def reference_adapter(pair: Pair):
    """The adapter's module naming applied to the reference model (no listeners installed)."""
    return type(pair.model.adapter)(pair.reference, pair.model.info)


def check_residual_decomposition(pair: Pair) -> None:
    info = pair.model.info
    names = block_names(pair, "resid_pre", "attn.out", "resid_mid", "mlp.out", "resid_post")
    cache = pair.model.forward(pair.batch, capture=names).cache
    real = pair.real
    twin = reference_adapter(pair)
    mlp_inputs = _reference_inputs(pair, {f"ln2.{layer}": twin.ln2(layer) for layer in range(info.n_layers)})
    for layer in range(info.n_layers):
        get = {
            site: cache[f"blocks.{layer}.{site}"][real]
            for site in ("resid_pre", "attn.out", "resid_mid", "mlp.out", "resid_post")
        }
        if info.post_norm:  # BERT: resid_mid is the attention sublayer's output, each sum normalised
            attention = _reference_inputs(pair, {"attn": twin.resid_mid_module(layer)}, outputs=True)["attn"][real]
            worst = pair.record("resid_mid vs HF attention sublayer", deviation(get["resid_mid"], attention))
            assert worst <= 1e-5
            ln1, ln2 = pair.model.adapter.ln1(layer), pair.model.adapter.ln2(layer)
            with torch.no_grad():
                assert deviation(ln1(get["attn.out"] + get["resid_pre"]), get["resid_mid"]) <= 1e-5
                assert deviation(ln2(get["mlp.out"] + get["resid_mid"]), get["resid_post"]) <= 1e-5
            continue
        worst = pair.record(
            "resid_post - (resid_pre + attn.out + mlp.out)",
            deviation(get["resid_post"], get["resid_pre"] + get["attn.out"] + get["mlp.out"]),
        )
        assert worst <= 1e-5
        assert deviation(get["resid_mid"], get["resid_pre"] + get["attn.out"]) <= 1e-6
        assert deviation(get["resid_post"], get["resid_mid"] + get["mlp.out"]) <= 1e-5
        # what the MLP really reads, in the reference model: resid_mid (sequential) or resid_pre (parallel)
        read = mlp_inputs[f"ln2.{layer}"][real]
        expected = get["resid_pre"] if info.parallel_blocks else get["resid_mid"]
        assert pair.record("MLP input vs HF", deviation(read, expected)) <= 1e-5


def check_outputs_equal_hf(pair: Pair) -> None:
    info = pair.model.info
    real = pair.real
    out = hf_outputs(pair)
    resid = ["embed", *block_names(pair, "resid_post"), "final"]
    plain = pair.model.forward(pair.batch, capture=resid)
    watched = pair.model.forward(pair.batch, capture=block_names(pair, "attn.pattern"))
    theirs = final_output(out)[real]
    for label, ours in (("output vs HF", plain.output), ("output (explicit attention) vs HF", watched.output)):
        worst = pair.record(label, deviation(ours[real], theirs))
        assert worst <= 1e-5, f"{label}: {worst:.3g}"
    hidden = out.hidden_states
    assert deviation(plain.cache["embed"][real], hidden[0][real]) <= 1e-6
    for layer in range(info.n_layers - 1):
        worst = pair.record(
            "resid_post vs HF hidden_states",
            deviation(plain.cache[f"blocks.{layer}.resid_post"][real], hidden[layer + 1][real]),
        )
        assert worst <= 1e-5
    assert deviation(plain.cache["final"][real], hidden[info.n_layers][real]) <= 1e-5
    if info.is_causal:  # the logit lens at the last layer is the model's output (Gemma-2: soft-capped)
        last = plain.cache[f"blocks.{info.n_layers - 1}.resid_post"]
        with torch.no_grad():
            lens = pair.model.unembed(last)
        assert pair.record("unembed(last resid_post) vs logits", deviation(lens[real], plain.output[real])) <= 1e-5


def _scale_points(pair: Pair) -> dict[str, str]:
    """scale hook point -> hook point(s) whose sum is the norm's input."""
    info = pair.model.info
    points = {}
    for layer in range(info.n_layers):
        if info.post_norm:
            points[f"blocks.{layer}.ln1.scale"] = f"blocks.{layer}.attn.out+blocks.{layer}.resid_pre"
            points[f"blocks.{layer}.ln2.scale"] = f"blocks.{layer}.mlp.out+blocks.{layer}.resid_mid"
        else:
            points[f"blocks.{layer}.ln1.scale"] = f"blocks.{layer}.resid_pre"
            mid = "resid_pre" if info.parallel_blocks else "resid_mid"
            points[f"blocks.{layer}.ln2.scale"] = f"blocks.{layer}.{mid}"
    if info.has_final_norm:
        points["final.scale"] = f"blocks.{info.n_layers - 1}.resid_post"
    return points


def check_norm_scales_are_normalisers(pair: Pair) -> None:
    points = _scale_points(pair)
    inputs = {n for spec in points.values() for n in spec.split("+")}
    cache = pair.model.forward(pair.batch, capture=[*points, *inputs]).cache
    for scale, spec in points.items():
        x = sum(cache[n] for n in spec.split("+"))
        expected = norm_scale(pair, x)[pair.real]
        captured = cache[scale][pair.real]
        assert captured.shape[-1] == 1
        worst = pair.record(
            "scale vs recomputed normaliser (relative)", float(((captured.double() - expected) / expected).abs().max())
        )
        assert worst <= 1e-5, f"{scale}: {worst:.3g}"


def check_freezing_scales(pair: Pair) -> None:
    clean = pair.model.forward(pair.batch).output
    points = list(_scale_points(pair))
    cache = pair.model.forward(pair.batch, capture=points).cache
    for point in points:
        frozen = pair.model.forward(pair.batch, interventions=[Intervention(point, "replace", value=cache[point])])
        worst = pair.record("frozen scale: output change", deviation(frozen.output[pair.real], clean[pair.real]))
        assert worst <= 1e-5, f"freezing {point} changed the output by {worst:.3g}"
        doubled = pair.model.forward(pair.batch, interventions=[Intervention(point, "scale", factor=2.0)])
        assert max_abs(doubled.output[pair.real], clean[pair.real]) > 1e-3, f"doubling {point} changed nothing"


def check_zeroing_a_key(pair: Pair) -> None:
    position = 1
    clean = pair.model.forward(pair.batch).output
    changed = pair.model.forward(
        pair.batch, interventions=[Intervention("blocks.0.attn.k", "zero", positions=[position])]
    )
    delta = (changed.output - clean).abs().amax(-1) * pair.real  # [b, pos], real positions only
    assert float(delta[:, position:].max()) > 1e-4, "zeroing a key changed nothing"
    if pair.model.info.is_causal:
        assert float(delta[:, :position].max()) <= 1e-6, "a causal model changed before the zeroed key"
    else:
        assert float(delta[:, :position].max()) > 1e-5, "bidirectional attention should change earlier positions"


def check_value_patching(pair: Pair) -> None:
    """v from other inputs, then z = pattern @ v (GQA expanded) with the patched values."""
    info = pair.model.info
    layer = info.n_layers - 1
    other = pair.model.tokenize(list(reversed(TEXTS)))
    assert other.input_ids.shape == pair.batch.input_ids.shape
    name = f"blocks.{layer}.attn.v"
    source = pair.model.forward(other, capture=[name]).cache[name]
    names = [name, f"blocks.{layer}.attn.pattern", f"blocks.{layer}.attn.z"]
    clean = pair.model.forward(pair.batch)
    patched = pair.model.forward(
        pair.batch, capture=names, interventions=[Intervention(name, "resample", value=source)]
    )
    v, pattern, z = (patched.cache[n] for n in names)
    torch.testing.assert_close(v, source, atol=0, rtol=0)
    group = info.n_heads // info.n_kv_heads
    v = v[:, :, torch.arange(info.n_heads) // group]  # [b, pos, head, d]
    expected = torch.einsum("bhqk,bkhd->bqhd", pattern.double(), v.double())
    assert pair.record("z vs pattern @ patched v", deviation(expected[pair.real], z[pair.real])) <= 1e-5
    assert max_abs(patched.output[pair.real], clean.output[pair.real]) > 1e-4


def check_query_scores_pattern_interventions(pair: Pair) -> None:
    info = pair.model.info
    real = pair.real
    pos = real.shape[1]
    layer = 0
    prefix = f"blocks.{layer}."
    # a zero query sees every allowed key equally (soft-capping keeps 0 at 0)
    position = 3
    cache = pair.model.forward(
        pair.batch,
        capture=[prefix + "attn.pattern"],
        interventions=[Intervention(prefix + "attn.q", "zero", positions=[position])],
    ).cache
    allowed = allowed_keys(pair, layer)[:, 0, position]  # [b, k]
    uniform = allowed.double() / allowed.sum(-1, keepdim=True)
    row = cache[prefix + "attn.pattern"][:, :, position].double()  # [b, h, k]
    assert deviation(row, uniform[:, None, :].expand_as(row)) <= 1e-6
    # a large bonus on the diagonal of the scores makes the pattern the identity
    bonus = 100.0 * torch.eye(pos)
    cache = pair.model.forward(
        pair.batch,
        capture=[prefix + "attn.pattern"],
        interventions=[Intervention(prefix + "attn.scores", "add", value=bonus)],
    ).cache
    eye = torch.eye(pos).expand(pair.batch.size, info.n_heads, pos, pos)
    assert deviation(real_queries(cache[prefix + "attn.pattern"], real), real_queries(eye, real)) <= 1e-6
    # the identity pattern makes each head's z its own (expanded) value
    names = [prefix + "attn.v", prefix + "attn.z"]
    cache = pair.model.forward(
        pair.batch,
        capture=names,
        interventions=[Intervention(prefix + "attn.pattern", "replace", value=torch.eye(pos))],
    ).cache
    group = info.n_heads // info.n_kv_heads
    v = cache[prefix + "attn.v"][:, :, torch.arange(info.n_heads) // group]
    assert deviation(cache[prefix + "attn.z"][real], v[real]) <= 1e-6


def check_resid_mid_intervention(pair: Pair) -> None:
    info = pair.model.info
    layer = 0
    prefix = f"blocks.{layer}."
    names = [prefix + s for s in ("resid_mid", "ln2.scale", "mlp.out", "resid_post")]
    clean = pair.model.forward(pair.batch, capture=names).cache
    delta = torch.linspace(-1.0, 1.0, info.d_model)
    moved = pair.model.forward(
        pair.batch, capture=names, interventions=[Intervention(prefix + "resid_mid", "add", value=delta)]
    ).cache
    real = pair.real
    assert deviation(moved[prefix + "resid_mid"][real], (clean[prefix + "resid_mid"] + delta)[real]) <= 1e-5
    if info.post_norm:  # BERT: the MLP reads resid_mid, and its add & norm includes it
        ln2 = pair.model.adapter.ln2(layer)
        with torch.no_grad():
            expected = ln2(moved[prefix + "mlp.out"] + moved[prefix + "resid_mid"])
        assert deviation(moved[prefix + "resid_post"][real], expected[real]) <= 1e-5
        assert max_abs(moved[prefix + "mlp.out"][real], clean[prefix + "mlp.out"][real]) > 1e-4
    elif info.parallel_blocks:  # the MLP never reads resid_mid: only the residual moves
        assert max_abs(moved[prefix + "mlp.out"][real], clean[prefix + "mlp.out"][real]) == 0.0
        assert deviation(moved[prefix + "resid_post"][real], (clean[prefix + "resid_post"] + delta)[real]) <= 1e-5
    else:  # sequential: the MLP reads the new resid_mid
        expected_scale = norm_scale(pair, moved[prefix + "resid_mid"])
        assert deviation(moved[prefix + "ln2.scale"][real], expected_scale[real]) <= 1e-5
        assert max_abs(moved[prefix + "mlp.out"][real], clean[prefix + "mlp.out"][real]) > 1e-4
        total = moved[prefix + "resid_mid"] + moved[prefix + "mlp.out"]
        assert deviation(moved[prefix + "resid_post"][real], total[real]) <= 1e-5


def check_mlp_pre_and_up(pair: Pair) -> None:
    info = pair.model.info
    prefix = "blocks.1."
    units = [0, 5, 7]
    points = ["mlp.pre", "mlp.up"] if info.gated_mlp else ["mlp.pre"]
    for point in points:
        cache = pair.model.forward(
            pair.batch, capture=[prefix + "mlp.post"], interventions=[Intervention(prefix + point, "zero", units=units)]
        ).cache
        post = cache[prefix + "mlp.post"]
        assert float(post[..., units].abs().max()) == 0.0, f"zeroing {point} left mlp.post non-zero"
        assert float(post[pair.real].abs().max()) > 0.0


CHECKS: dict[str, Callable[[Pair], None]] = {
    "pattern": check_pattern_equals_hf_eager,
    "scores": check_scores_softmax_to_pattern,
    "q_dot_k": check_q_dot_k_gives_scores,
    "residual": check_residual_decomposition,
    "outputs": check_outputs_equal_hf,
    "norm_scales": check_norm_scales_are_normalisers,
    "freeze_scales": check_freezing_scales,
    "zero_key": check_zeroing_a_key,
    "patch_values": check_value_patching,
    "q_scores_pattern": check_query_scores_pattern_interventions,
    "resid_mid": check_resid_mid_intervention,
    "mlp_pre_up": check_mlp_pre_and_up,
}


@pytest.fixture(scope="module", params=CASES)
def pair(request):
    built = build_case(request.param)
    yield built
    built.model.close()


@pytest.mark.parametrize("check", list(CHECKS))
def test_reference(pair, check):
    CHECKS[check](pair)
    assert pair.model.hooks_left() == 0


def test_every_hook_point_fires_and_watching_changes_nothing(tiny_arch_model):
    """All hook points at once, on the embedded (unperturbed) model: each fires with its shape,
    and the explicit attention path gives the fused path's output at every position, padding
    included (fully masked rows of sliding windows get what the stood-in implementation gives)."""
    model = tiny_arch_model
    batch = model.tokenize(TEXTS)
    plain = model.forward(batch).output
    out = model.forward(batch, capture=model.hook_names())
    assert set(out.cache) == set(model.hook_names()) == set(model.info.hook_points())
    assert torch.isfinite(out.output).all()
    torch.testing.assert_close(out.output, plain, atol=1e-5, rtol=0)
    assert model.hooks_left() == 0


# --- architecture specifics -----------------------------------------------------------
def test_capability_flags_follow_the_config():
    neox = describe_model("tiny_neox")
    assert (neox.architecture, neox.parallel_blocks, neox.gated_mlp) == ("gpt_neox", True, False)
    gemma = describe_model("tiny_gemma2")
    assert gemma.architecture == "gemma2"
    assert gemma.logit_softcap == _tiny_config("tiny_gemma2").final_logit_softcapping
    assert not gemma.heads_sum_to_attn_out and gemma.gated_mlp
    for name in ("tiny_mistral", "tiny_qwen2"):
        info = describe_model(name)
        assert (info.n_kv_heads, info.parallel_blocks, info.logit_softcap) == (2, False, None)
    sequential = build_case("tiny_neox_sequential")
    try:
        assert not sequential.model.info.parallel_blocks
    finally:
        sequential.model.close()


@pytest.fixture(scope="module")
def gemma():
    built = build_case("tiny_gemma2")
    yield built
    built.model.close()


def test_gemma2_embed_is_scaled_and_logits_are_soft_capped(gemma):
    batch, real = gemma.batch, gemma.real
    out = gemma.model.forward(batch, capture=["embed", "logits"])
    weight = gemma.reference.model.embed_tokens.weight
    torch.testing.assert_close(out.cache["embed"], weight[batch.input_ids] * math.sqrt(gemma.model.info.d_model))
    torch.testing.assert_close(out.cache["logits"], out.output, atol=0, rtol=0)  # the hook point is after the cap
    cap = gemma.model.info.logit_softcap
    assert float(out.output.abs().max()) < cap
    # the cap bites: the uncapped lm_head output is larger
    with torch.no_grad():
        raw = gemma.reference.lm_head(
            gemma.reference.model.norm(
                gemma.model.forward(batch, capture=["blocks.1.resid_post"]).cache["blocks.1.resid_post"]
            )
        )
    assert max_abs(raw[real], out.output[real]) > 0.1
    # writing logits goes through the cap's inverse: the model returns what was written
    target = out.cache["logits"].clone()
    target[:, 2, :5] = torch.tensor([-0.9, -0.5, 0.0, 0.5, 0.9]) * cap
    written = gemma.model.forward(batch, interventions=[Intervention("logits", "replace", value=target)]).output
    assert gemma.record("logits written through the cap", deviation(written[real], target[real])) <= 1e-4


def test_gemma2_heads_do_not_sum_to_attn_out(gemma):
    """The post-attention norm sits between o_proj and the residual: attn.out is its output."""
    layer = 0
    names = [f"blocks.{layer}.attn.z", f"blocks.{layer}.attn.out"]
    cache = gemma.model.forward(gemma.batch, capture=names).cache
    w_o, bias = gemma.model.adapter.head_output_weights(layer)
    summed = torch.einsum("bphd,hdm->bpm", cache[names[0]], w_o.detach())
    norm = gemma.reference.model.layers[layer].post_attention_layernorm
    with torch.no_grad():
        torch.testing.assert_close(norm(summed), cache[names[1]], atol=1e-5, rtol=1e-5)
    assert max_abs(summed[gemma.real], cache[names[1]][gemma.real]) > 1e-3


# --- SmolLM2 (slow) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_pair(smollm2):
    """The shared session model is only read here: its twin gets a copy of its weights."""
    reference = eager_twin(smollm2.hf_model)
    return Pair(smollm2, reference, smollm2.tokenize(TEXTS))


@pytest.mark.slow
@pytest.mark.parametrize("check", list(CHECKS))
def test_reference_smollm2(smollm2_pair, check):
    CHECKS[check](smollm2_pair)
    assert smollm2_pair.model.hooks_left() == 0


# --- an adapter contributed by a third-party plugin ---------------------------------------
def test_plugin_adapter_wraps_its_model_type(example_plugin):
    """The example plugin's StableLM adapter, discovered through its installed entry point."""
    from transformers import AutoModelForCausalLM, StableLmConfig

    from interpsuite import plugins
    from interpsuite.models.adapters import BUILTIN_ADAPTERS, adapter_for

    plugins.reset_registry()
    registry = plugins.get_registry()
    contribution = registry.adapters["stablelm"]
    assert contribution.distribution == "interpsuite-example-plugin"
    assert all("stablelm" not in a.model_types for a in BUILTIN_ADAPTERS)
    assert adapter_for("stablelm") is contribution.obj
    with pytest.raises(ConfigError, match=r"supported: .*stablelm"):
        adapter_for("no_such_model_type")
    config = StableLmConfig(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        use_qkv_bias=True,
        pad_token_id=257,
        bos_token_id=256,
        eos_token_id=256,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    perturb_norms(hf_model)
    built = make_pair(hf_model, byte_tokenizer())
    try:
        assert type(built.model.adapter) is contribution.obj
        assert built.model.info.architecture == "stablelm"
        for check in ("pattern", "scores", "q_dot_k", "residual", "outputs", "norm_scales", "freeze_scales"):
            CHECKS[check](built)
    finally:
        built.model.close()
    assert built.deviations["pattern vs HF eager"] <= PATTERN_TOL
