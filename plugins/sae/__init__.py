"""Sparse autoencoders (family `sae`): record, train, evaluate, browse, patch live, SAELens files.

Engines first, each a plain Python API the server and scripts reuse without the pipeline:
`SAEConfig` / `SparseAutoencoder` (relu, topk, jumprelu; SAELens parameter names), `train_sae`
with `TrainSettings` (resumable checkpoints, AuxK, decoder-norm L1, JumpReLU STE),
`store_batches` / `shuffle_buffer` (stream an activation store with bounded memory),
`record_activations` / `train_on_store` (text -> store -> trained SAE, scale folded in),
`evaluate_sae` (MSE, EV, L0, dead/dense latents, CE loss recovered), `feature_report` and
`feature_browser_html` (what each latent responds to, as an offline HTML browser),
`SyntheticDictionary` / `synthetic_recovery` (a known answer for the trainer),
`load_sae` / `load_saelens` / `save_saelens` (both file formats; JSON and safetensors only),
and an offline corpus (`python_docs_texts`, `text_files`). Live patching is the core API
`HookedModel.sae_splice`. The analyzers `sae_train`, `sae_eval` and `sae_features` are thin
layers over these.

Names are loaded on first use: importing the package does not import torch.
"""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers, lazy_exports

MODULES: tuple[str, ...] = ("sae_train", "sae_eval", "sae_features")

_EXPORTS = {
    "SAEConfig": "model",
    "SparseAutoencoder": "model",
    "TrainSettings": "training",
    "TrainHistory": "training",
    "train_sae": "training",
    "geometric_median": "training",
    "sae_loss": "training",
    "explained_variance": "training",
    "shuffle_buffer": "training",
    "store_batches": "training",
    "norm_scaling_factor": "training",
    "fold_activation_scale": "training",
    "SyntheticDictionary": "synthetic",
    "dictionary_recovery": "synthetic",
    "synthetic_recovery": "synthetic",
    "RecoveryResult": "synthetic",
    "load_sae": "files",
    "read_sae_config": "files",
    "corpus_texts": "workflow",
    "split_held_out": "workflow",
    "record_activations": "workflow",
    "train_on_store": "workflow",
    "TrainOutcome": "workflow",
    "feature_report": "features",
    "Workbench": "workbench",
    "Patch": "workbench",
    "export_patches": "patch_files",
    "import_patches": "patch_files",
    "export_lora": "patch_files",
    "FeatureReport": "features",
    "FeatureEntry": "features",
    "FeatureContext": "features",
    "QuantileGroup": "features",
    "LogitEffects": "features",
    "CoFiring": "features",
    "plot_feature_density": "feature_plots",
    "plot_feature_cards": "feature_plots",
    "feature_browser_html": "browser",
    "write_feature_browser": "browser",
    "SAEEvaluation": "evaluation",
    "python_docs_texts": "corpus",
    "text_files": "corpus",
    "count_tokens": "corpus",
    "evaluate_sae": "evaluation",
    "load_saelens": "saelens",
    "save_saelens": "saelens",
}

__all__ = sorted([*_EXPORTS, "MODULES"])


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
