"""Formulas behind the estimates of the built-in analyzers that are too long for their class.

Each takes plain numbers (sizes, counts), never plugin objects, so the core does not depend on
the plugins: the analyzer's `estimate` method gathers what its `run` would see (its prompt set,
its configuration) and calls these. Where a count is not knowable before running (iterations to
convergence), the assumption is named in the estimate's notes.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Lloyd iterations k-means is assumed to take per initialisation (scikit-learn stops at tol=1e-4;
#: 7 on SmolLM2's last-layer residuals of the 480 tokens of the shipped English sentences, k=8)
KMEANS_ITERATIONS = 20


def kmeans_macs(n: int, k: int, d: int, n_init: int, iterations: int = KMEANS_ITERATIONS) -> float:
    """k-means: every iteration computes n x k distances of width d and the k new centres."""
    return float(n_init * iterations * (n * k * d + n * d))


def silhouette_macs(n: int, d: int) -> float:
    """The silhouette score: all pairwise distances of the sample."""
    return float(n * n * d)


def pca_macs(n: int, d: int, components: int) -> float:
    """A randomised/truncated PCA of an n x d matrix to a few components (a few passes over it)."""
    return float(n * d * max(components, 1) * 4)


def attention_flow_macs(n_layers: int, n: int, outputs: int = 1) -> float:
    """Attention flow (Abnar & Zuidema): one preflow-push max flow in networkx (pure Python) per
    (output, input token) over a graph of n_layers x n^2 edges. Measured on this project's CI
    machine against the float32 matmul rate (n = 8..32 tokens, 10 and 30 layers): about
    FLOW_MACS multiply-accumulates' time per input token, layer and edge."""
    edges = n_layers * n * n
    return float(outputs * n * n_layers * edges * FLOW_MACS)


#: see attention_flow_macs (0.44 s for 30 layers x 15 tokens, 2.4 s for 30 x 32, at 1e-11 s per MAC)
FLOW_MACS = 8000


def lens_unembed_macs(tokens: int, lenses: int, d_model: int, vocab: int) -> float:
    """Unembedding every token at `lenses` lens layers, and the vocabulary-wide work on each logit
    (log-softmax, probabilities, KL to the final distribution, entropy, argmax, rank, top-k)."""
    return float(tokens * lenses * vocab * (d_model + LENS_ELEMENT_MACS))


#: the logit lens's elementwise work per logit, in multiply-accumulates' time: 4.5 ns per element
#: of a [8, 16, 49152] float32 tensor against 1e-11 s per MAC of a 768^3 matrix product
LENS_ELEMENT_MACS = 440


def tuned_lens_training_macs(
    n_tokens: int,
    n_translators: int,
    d_model: int,
    vocab: int,
    kept_vocab: int,
    steps: int,
    batch_tokens: int,
    monitor_tokens: int,
    monitor_points: int,
) -> float:
    """Least-squares initialisation (float64 Gram matrices and solves, at half the float32 rate),
    the final distributions of the cached tokens, and the Adam steps on the KL objective over the
    kept vocabulary (forward + backward: 3x), with the monitored objective along the curve."""
    d1 = d_model + 1
    least_squares = 2 * n_translators * (n_tokens * d1 * d1 + n_tokens * d1 * d_model + d1**3 / 3)
    objective = 2 * n_tokens * vocab * d_model + n_tokens * kept_vocab * d_model
    per_token = d_model * d_model + kept_vocab * d_model
    training = 3 * steps * n_translators * batch_tokens * per_token
    monitor = (monitor_points + 2) * n_translators * monitor_tokens * per_token
    return float(least_squares + objective + training + monitor)


#: L-BFGS iterations of a batched logistic probe (the solver stops at a gradient of 1e-4): measured
#: on SmolLM2's residual stream, 30-44 for the sentiment set and 89-132 for truth (30 layers x 4 C)
LBFGS_ITERATIONS = 60
#: time of one iteration per (problem, training example, feature), in multiply-accumulates: the
#: objective and gradient in float64 with the line search and the two-loop recursion on small
#: tensors (measured 73 for sentiment, 128 for truth, against the float32 matmul rate)
PROBE_ITERATION_MACS = 100
#: the share of a labelled set the probes train on (ProbeConfig.train_frac)
TRAIN_FRACTION = 0.6


def probe_fit_macs(problems: int, n: int, d: int, classes: int, iterations: int = LBFGS_ITERATIONS) -> float:
    """Batched L2 logistic regression: `problems` (layers x C values x label sets x seeds) fits on
    the training share of n examples of d features."""
    k = classes if classes > 2 else 1
    return float(problems * iterations * TRAIN_FRACTION * n * d * k * PROBE_ITERATION_MACS)


def cka_matrix_macs(layers: int, n: int, d: int) -> float:
    """Linear CKA of every pair of layers in feature space: ||X^T Y||^2 per pair (float64)."""
    pairs = layers * (layers + 1) // 2
    return float(2 * pairs * n * d * d)


def rsa_macs(layers: int, n: int, d: int) -> float:
    """RSA of every ordered pair of layers: two correlation RDMs (n^2 d) and a Spearman correlation
    of their n^2 / 2 entries (ranking: a sort, ~SORT_MACS per element and log2 level)."""
    import math

    entries = n * n / 2
    ranking = 2 * entries * math.log2(max(entries, 2)) * SORT_MACS
    return float(layers * layers * (2 * 2 * n * n * d + ranking))


def rbf_cka_macs(layers: int, n: int, d: int) -> float:
    """RBF CKA of every ordered pair of layers: two RBF Gram matrices and three n x n x n HSIC products (float64)."""
    return float(layers * layers * 2 * (2 * n * n * d + 3 * n**3))


#: one element of a float64 sort, per log2 level, in multiply-accumulates' time (torch's CPU sort
#: of 500k values: 36 ms at 1e-11 s per float32 MAC)
SORT_MACS = 380


def module_shapes(info) -> list[tuple[int, int]]:
    """(out, in) of every weight matrix of one block, from the dimensions (attention projections, MLP)."""
    q, kv = info.n_heads * info.d_head, info.n_kv_heads * info.d_head
    mlp = [(info.d_mlp, info.d_model)] * (2 if info.gated_mlp else 1) + [(info.d_model, info.d_mlp)]
    return [(q, info.d_model), (kv, info.d_model), (kv, info.d_model), (info.d_model, q), *mlp]


def svd_macs(m: int, n: int) -> float:
    """Singular values of an m x n matrix (Householder bidiagonalisation, ~4 m n min(m, n))."""
    return float(4 * m * n * min(m, n))


def importance_cost(
    workload,
    criterion: str,
    granularity: str,
    lengths: list[int],
    unit_layers: list[int] | None = None,
    sweep_batch: int = 32,
):
    """Passes of one pruning importance criterion over calibration texts of these token lengths:
    magnitude none; wanda one pass with every linear input's norm (last logit); activation one
    capturing pass; taylor one forward+backward with the loss (all logits); ablation per batch a
    sweep of the clean item and one zeroed unit per item, from the unit's layer (all logits)."""
    info = workload.info
    site = "mlp.post" if granularity == "neurons" else "attn.z"
    names = [f"blocks.{layer}.{site}" for layer in range(info.n_layers)]
    if criterion == "magnitude":
        return workload.macs(4 * info.n_layers * sum(m * n for m, n in module_shapes(info)))
    if criterion == "wanda" or (criterion == "activation" and granularity == "unstructured"):
        return workload.forward_batches(lengths, logits=1)
    if criterion == "activation":
        return workload.forward_batches(lengths, logits=1, capture=names)
    if criterion == "taylor":
        return workload.forward_batches(lengths, capture=names, grad=True)
    layers = unit_layers if unit_layers is not None else []
    cost = workload.figures(0)
    for rows in workload.batches(lengths):
        starts = [(info.n_layers, max(rows))] + [(layer, 0) for layer in layers]
        cost = cost + workload.sweep(len(rows), max(rows), starts, sweep_batch)
    return cost


@dataclass
class SAEWork:
    """What an SAE run reads and trains, gathered by the analyzer from its corpus and config."""

    hook: str
    d_in: int
    width: int
    train_lengths: list[int]
    held_lengths: list[int]
    epochs: int = 1
    train_tokens: int | None = None
    training_bytes: int = 0
    buffer_tokens: int = 262144
    synthetic_steps: int = 0
    saelens: bool = False


#: a topk SAE step: encode (d x width) and decode (width x d) forward, twice that backward, and
#: AuxK's extra decode of the dead latents' residual while latents are dead (counted as one more)
SAE_STEP_PASSES = 7


def sae_train_cost(workload, work: SAEWork):
    """Recording the hook over the training texts to a store, the training steps, the held-out
    evaluation (clean, spliced and zero-ablated passes), the synthetic check, the saved files."""
    d, width = work.d_in, work.width
    recorded = sum(work.train_lengths)
    budget = work.train_tokens or recorded * work.epochs
    cost = workload.forward_batches(work.train_lengths, logits=1, capture=[work.hook])
    cost = cost + workload.macs(SAE_STEP_PASSES * budget * d * width)
    buffer = min(work.buffer_tokens, recorded) * d * 4
    cost = cost.hold(work.training_bytes + buffer)
    if work.held_lengths:
        cost = cost + sae_eval_cost(workload, work.hook, work.held_lengths, d, width)
    if work.synthetic_steps:  # the synthetic dictionary: 64 dims, 256 latents, batches of 256
        cost = cost + workload.macs(SAE_STEP_PASSES * work.synthetic_steps * 256 * 64 * 256)
    weights = 2 * d * width * 4
    store = recorded * (d * 4 + 40)
    files = store + weights * (2 if work.saelens else 1) + 4 * weights  # SAE, export, checkpoint (+ Adam)
    figures = workload.figures(1 + int(bool(work.held_lengths)), 4 + int(bool(work.held_lengths)))
    return cost + workload.disk(files) + figures


def sae_eval_cost(workload, hook: str, lengths: list[int], d: int, width: int, downstream: bool = True):
    """Evaluating an SAE: a capturing pass, the SAE on every token, and (downstream) a spliced and a
    zero-ablated pass with all logits for the cross-entropy."""
    cost = workload.forward_batches(lengths, capture=[hook])
    if downstream:
        cost = cost + workload.forward_batches(lengths).times(2)
    padded = sum(max(b) * len(b) for b in workload.batches(lengths))
    return cost + workload.macs(2 * padded * d * width * (2 if downstream else 1))
