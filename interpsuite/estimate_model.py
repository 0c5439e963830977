"""The arithmetic of one forward pass, from the model's dimensions alone (no weights).

Two quantities per pass, both pure functions of `ModelInfo` and the pass's shape:

- multiply-accumulates (MACs): every linear layer costs its parameter count per token it
  processes, attention adds queries x keys x head width twice (scores, then mixing values),
  and the unembedding costs d_model x vocab per logit position kept. A pass that starts at
  layer L (the sweep engine's prefix reuse) runs only the blocks from L on; one that starts at
  position p (a reused key/value prefix) computes only positions p.. but still attends to the
  earlier keys. Seconds per MAC come from a timed probe (`estimate_probe`), so the constants
  of the hardware never appear here.
- bytes of activations alive at the peak of the pass: the residual stream and the widest
  block temporaries (the MLP's hidden layer, attention scores) of one layer, the logits, and
  whatever the pass captures (captures of every layer stay alive until the pass ends). A
  differentiated pass keeps every block's saved tensors for the backward pass instead.

The counts are upper bounds of what PyTorch allocates for these shapes, not measurements of
an allocator; `benchmarks/bench_estimate.py` compares them with the peak RSS of real runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .hooks import parse_hook_name
from .models import ModelInfo

#: bytes per element of the dtypes a model runs in (the hook points carry the model's dtype)
DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
#: per-layer tensors a differentiated block saves, in units of d_model per token: the two norms'
#: inputs and outputs, queries/keys/values after rotary, the attention output and its projection,
#: the residual adds (counted from LlamaDecoderLayer's autograd graph; GPT-2 and BERT save fewer)
SAVED_RESID_WIDTHS = 10
#: the same for the MLP hidden width: gate and up projections, the activation and the product
SAVED_MLP_WIDTHS_GATED = 4
SAVED_MLP_WIDTHS_PLAIN = 2
#: what an analyzer does with every logit it keeps (a log-softmax over the vocabulary, as losses,
#: probabilities and KLs need), in multiply-accumulates' time: 1.1 ns per element of a
#: [8, 16, 49152] float32 tensor against 1e-11 s per MAC of a 768^3 matrix product. The timing
#: probe takes the same log-softmax of its logits, so the calibration and the count agree.
LOGIT_ELEMENT_MACS = 120


def hook_width(info: ModelInfo, hook: str, keys: int) -> int:
    """Elements per token (per query position) of a hook point; `keys` is the key length a
    query sees (attention patterns and scores hold one weight per key and head)."""
    _, site = parse_hook_name(hook)
    if site in ("attn.pattern", "attn.scores"):
        return info.n_heads * keys
    if site in ("attn.z", "attn.q"):
        return info.n_heads * info.d_head
    if site in ("attn.k", "attn.v"):
        return info.n_kv_heads * info.d_head
    if site in ("mlp.post", "mlp.pre", "mlp.up"):
        return info.d_mlp
    if site == "logits":
        return info.vocab_size
    if site.endswith("scale"):
        return 1
    return info.d_model  # embed, resid_*, attn.out, mlp.out, final


def explicit_attention(hooks: Iterable[str]) -> bool:
    """Capturing patterns or scores makes attention run explicitly (the [q, k] matrix exists)."""
    return any(parse_hook_name(h)[1] in ("attn.pattern", "attn.scores") for h in hooks)


def layer_params(info: ModelInfo) -> int:
    """Weights one block multiplies each token by (attention projections + MLP)."""
    attention = 2 * info.d_model * info.n_heads * info.d_head + 2 * info.d_model * info.n_kv_heads * info.d_head
    mlp = (3 if info.gated_mlp else 2) * info.d_model * info.d_mlp
    return attention + mlp


def model_params(info: ModelInfo) -> int:
    """Parameters of the model as the dimensions give them (blocks + embedding + an untied unembedding
    counted once: an upper bound for tied models by at most the unembedding)."""
    blocks = info.n_layers * (layer_params(info) + 4 * info.d_model)
    embed = info.vocab_size * info.d_model
    return blocks + embed + (embed if info.is_causal else 0)


@dataclass(frozen=True)
class PassShape:
    """One forward pass: `rows` x `width` tokens, computed from `start_layer` and `start_position`
    on, with `logits` positions per row unembedded (None: every computed position)."""

    rows: int
    width: int
    start_layer: int = 0
    start_position: int = 0
    logits: int | None = None

    @property
    def computed(self) -> int:
        return max(0, self.width - self.start_position)


def pass_macs(info: ModelInfo, shape: PassShape) -> float:
    """Multiply-accumulates of one pass."""
    layers = max(0, info.n_layers - shape.start_layer)
    t = shape.computed
    # a causal query at position i reads i + 1 keys: positions p..W-1 read (p + W + 1) / 2 on average
    keys = (shape.start_position + shape.width + 1) / 2 if info.is_causal else shape.width
    attention_mix = 2 * info.n_heads * info.d_head * keys
    blocks = shape.rows * t * layers * (layer_params(info) + attention_mix)
    kept = t if shape.logits is None else min(shape.logits, t)
    unembed = shape.rows * kept * info.vocab_size * (info.d_model + LOGIT_ELEMENT_MACS) if info.is_causal else 0.0
    return float(blocks + unembed)


def pass_tokens(info: ModelInfo, shape: PassShape) -> float:
    """Tokens processed, in full-model equivalents (a pass through half the blocks counts half)."""
    layers = max(0, info.n_layers - shape.start_layer)
    return shape.rows * shape.computed * layers / max(info.n_layers, 1)


def pass_memory(
    info: ModelInfo,
    shape: PassShape,
    dtype_bytes: int,
    capture: Sequence[str] = (),
    grad: bool = False,
) -> float:
    """Bytes of activations alive at the peak of one pass (above the weights)."""
    r, t, w = shape.rows, shape.computed, shape.width
    explicit = explicit_attention(capture)
    layers = max(0, info.n_layers - shape.start_layer)
    # one block's temporaries: residual, norm output, attention output, q/k/v; the MLP's hidden
    # layer; the attention matrix (scores and softmax) where attention runs explicitly
    scores = r * info.n_heads * t * w * (2 if explicit else 1)
    block = r * t * (6 * info.d_model + 3 * info.d_mlp) + scores
    captured = sum(r * t * hook_width(info, h, w) for h in capture)
    kept = t if shape.logits is None else min(shape.logits, t)
    # logits in the model's dtype, and two float32 tensors of the same shape: the (log-)softmax an
    # analyzer takes of them and one more elementwise result (probabilities, a KL, a gather's source)
    logits = r * kept * info.vocab_size * (dtype_bytes + 8) if info.is_causal else 0
    if not grad:
        return float((block + captured) * dtype_bytes + logits)
    mlp_widths = SAVED_MLP_WIDTHS_GATED if info.gated_mlp else SAVED_MLP_WIDTHS_PLAIN
    saved_per_layer = r * t * (SAVED_RESID_WIDTHS * info.d_model + mlp_widths * info.d_mlp) + r * info.n_heads * t * w
    # backward: the saved tensors, the gradient flowing back (one block wide) and the logits' gradient
    return float((layers * saved_per_layer + block + captured * 2) * dtype_bytes + 2 * logits)


def batch_shapes(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(rows, width) of each batch when texts of these token lengths are batched in order and
    right-padded to the longest in their batch (what `HookedModel.batches` does)."""
    shapes = []
    for start in range(0, len(lengths), max(1, batch_size)):
        chunk = lengths[start : start + batch_size]
        shapes.append((len(chunk), max(chunk)))
    return shapes
