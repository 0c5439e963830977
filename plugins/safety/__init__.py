"""Safety family (issue 12): refusal and harm representations, failure prediction, anomaly detection.

Engines first, each a plain Python API the server and training monitors reuse without the
pipeline: `refusal` (refusal direction, directional ablation and addition), `failure`
(`FailurePredictor`: will the model get this input wrong, from its internals) and `anomaly`
(`AnomalyDetector`: is this input unlike the normal texts it was fitted on). Predictors and
detectors are saved as safetensors + JSON (`interpsuite.artifacts`), never pickle, and
refuse to load for another model. The analyzers are thin layers over the engines; the
console commands `predict-failure` and `detect-anomaly` act on saved artifacts.
"""

from __future__ import annotations

from interpsuite.hookspecs import hookimpl

from .._family import collect_analyzers

__all__ = ["AnomalyDetector", "FailurePredictor", "MODULES"]

MODULES: tuple[str, ...] = ("refusal_direction", "safety_concepts", "failure_prediction", "anomaly_detection")


@hookimpl
def interpsuite_analyzers():
    return collect_analyzers(__name__, MODULES)


@hookimpl
def interpsuite_commands():
    from .anomaly_command import DETECT_ANOMALY
    from .failure_command import PREDICT_FAILURE

    return [PREDICT_FAILURE, DETECT_ANOMALY]


def __getattr__(name: str):
    """The engines' classes, imported on first use (registering the plugin stays cheap)."""
    if name == "AnomalyDetector":
        from .anomaly import AnomalyDetector

        return AnomalyDetector
    if name == "FailurePredictor":
        from .failure import FailurePredictor

        return FailurePredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
