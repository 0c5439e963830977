"""POST /predict/failure and POST /detect/anomaly: the safety engines over HTTP.

Thin routes over `plugins/safety/failure.py` (FailurePredictor) and `plugins/safety/anomaly.py`
(AnomalyDetector), with the checks of their commands (`predict-failure`, `detect-anomaly`) in the
same order: texts (limits, then the engine's non-empty check), the saved artifact (path confined
by `paths.resolve_artifact`, read and verified, fingerprint against the served model), and only
then the forward passes, on the pool. A saved predictor or detector is kept in a small LRU keyed
by its resolved folder and the modification time of its artifact.json, so repeated requests do
not re-read it while a re-saved one is read again.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError
from ...results import to_jsonable
from ..analysis import check_limits, deadline, submit, wait
from ..errors import ApiError
from ..paths import artifact_roots, resolve_artifact
from ..state import Loaded, ServerState
from .deps import get_state

router = APIRouter(tags=["safety"])

_FORBID = ConfigDict(extra="forbid")
#: where the failure_prediction analyzer saves its predictor inside a run
PREDICTOR_IN_RUN = ("data", "failure_prediction", "predictor")
NO_PREDICTOR = (
    "no saved failure predictor for model {model} in the runs of the runs or artifact directories; run the "
    "failure_prediction analyzer first, e.g. interpsuite +experiment=failure_prediction, or give `predictor`"
)
#: detector options a request may set when it fits on `normal` texts (DetectorConfig fields)
FIT_OPTIONS = ("layers", "hook_point", "method", "k", "pooling", "aggregate", "fpr", "held_out", "max_bank", "seed")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a ConfigError: empty text, another model's artifact, a bad option (one line)"},
    404: {"description": "the predictor or detector folder is not inside the runs or artifact directories"},
    413: {"description": "too many or too long texts"},
    422: {"description": "the request does not fit the schema"},
    503: {"description": "the analysis queue is full (Retry-After)"},
    504: {"description": "the time budget ran out; the work was cancelled"},
}


class TextsRequest(BaseModel):
    model_config = _FORBID
    text: str | None = Field(default=None, description="one text (give `text` or `texts`)")
    texts: list[str] | None = Field(default=None, description="several texts")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give either `text` or `texts` (exactly one)")
        return self

    def text_list(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class FailureRequest(TextsRequest):
    """Texts to score and the predictor (a folder relative to the runs directory or an artifact
    directory; default: the newest one saved by a run on the served model)."""

    predictor: str | None = Field(default=None, description="e.g. RUN_ID/data/failure_prediction/predictor")
    top: int = Field(default=3, ge=1, le=1000, description="features listed per text (largest |contribution|)")


class AnomalyRequest(TextsRequest):
    """Texts to score with a saved detector, or with one fitted here on `normal` texts (exactly one of the two)."""

    detector: str | None = Field(default=None, description="e.g. RUN_ID/data/anomaly_detection/detector")
    normal: list[str] | None = Field(default=None, description="normal texts to fit a detector on (instead of one)")
    fit: dict[str, Any] | None = Field(
        default=None, description=f"with `normal`: detector options ({', '.join(FIT_OPTIONS)})"
    )
    per_token: bool = Field(default=False, description="also score every token")


# --- loaded artifacts ------------------------------------------------------------------------------
class ArtifactCache:
    """A small LRU of loaded artifacts: (kind, folder, mtime of artifact.json) -> object."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, folder: Path, load: Callable[[Path], Any]) -> Any:
        meta = folder / "artifact.json"
        key = (kind, str(folder), meta.stat().st_mtime_ns if meta.is_file() else None)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load(folder)  # outside the lock: reading a file must not block other requests
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


_STATE_LOCK = threading.Lock()


def artifact_cache(state: ServerState) -> ArtifactCache:
    """The server's cache of loaded predictors and detectors (made on first use)."""
    with _STATE_LOCK:
        cache = getattr(state, "safety_artifacts", None)
        if cache is None:
            cache = ArtifactCache()
            state.safety_artifacts = cache
        return cache


def relative_to_root(state: ServerState, folder: Path) -> str:
    """The folder as a client names it: relative to the root (runs_dir or an artifact dir) holding it."""
    for root in artifact_roots(state.settings):
        base = root.resolve()
        if folder.is_relative_to(base):
            return folder.relative_to(base).as_posix()
    return folder.name


def check_fingerprint(fingerprint: Any, model: Any, what: str) -> None:
    """400 when the artifact was fitted on another model (checked before any forward pass)."""
    from ...artifacts import ModelFingerprint

    reason = fingerprint.mismatch(ModelFingerprint.of(model)) if fingerprint is not None else None
    if reason is not None:
        raise ConfigError(f"{what}: {reason}; fit a new one on this model")


# --- failure prediction ----------------------------------------------------------------------------
def newest_predictor(state: ServerState, model_name: str) -> Path:
    """The predictor folder of the newest run (artifact.json modification time) fitted on `model_name`,
    among the runs directly inside runs_dir and the artifact dirs (a Hydra `outputs/<experiment>` works)."""
    found: list[tuple[int, str, Path]] = []
    for root in (folder.resolve() for folder in artifact_roots(state.settings)):
        if not root.is_dir():
            continue
        for run in root.iterdir():
            folder = run.joinpath(*PREDICTOR_IN_RUN)
            meta = folder / "artifact.json"
            try:
                if not meta.is_file() or not meta.resolve().is_relative_to(root):
                    continue
                record = json.loads(meta.read_text(encoding="utf-8"))
                name = (record.get("model") or {}).get("name")
                if record.get("kind") == "failure_predictor" and name == model_name:
                    found.append((meta.stat().st_mtime_ns, run.name, folder.resolve()))
            except (OSError, ValueError, AttributeError):
                continue  # unreadable or foreign: not a candidate
    if not found:
        raise ApiError(404, NO_PREDICTOR.format(model=model_name))
    return max(found)[2]


def predictor_summary(predictor: Any, path: str) -> dict:
    fingerprint = predictor.fingerprint
    return {
        "path": path,
        "model": fingerprint.name if fingerprint is not None else None,
        "architecture": fingerprint.architecture if fingerprint is not None else None,
        "families": list(predictor.families),
        "feature_names": predictor.feature_names,
        "probe_layers": list(predictor.probe_layers),
        "n_layers": predictor.n_layers,
        "c": predictor.linear.c,
        "options": dict(predictor.options),
    }


def failure_results(texts: list[str], scores: Any, top: int) -> list[dict]:
    results = []
    for row, text in enumerate(texts):
        features = [
            {"name": name, "contribution": contribution, "value": value}
            for name, contribution, value in scores.top_features(row, top)
        ]
        results.append({"text": text, "probability": float(scores.probability[row]), "top_features": features})
    return results


@router.post("/predict/failure", summary="Probability that the model answers each prompt wrongly", responses=_ERRORS)
async def predict_failure(body: FailureRequest, state: ServerState = Depends(get_state)) -> dict:
    """A saved failure predictor (from the failure_prediction analyzer) scores new prompts: the
    probability of a wrong answer and the features that moved it most (contributions to the logit,
    + towards failure)."""
    from interpsuite_plugins.safety.failure import FailurePredictor
    from interpsuite_plugins.safety.texts import check_texts

    settings = state.settings
    until = deadline(settings)
    texts = body.text_list()
    check_limits(settings, [texts])
    check_texts(texts, "predict/failure")
    loaded = state.current()
    if body.predictor is not None:
        folder = resolve_artifact(settings, body.predictor, "predictor")
    else:
        folder = await run_in_threadpool(newest_predictor, state, loaded.name)

    def prepare() -> Any:
        predictor = artifact_cache(state).get("failure_predictor", folder, FailurePredictor.load)
        if predictor.n_layers is None:
            raise ConfigError("predictor: fitted on features only, it cannot extract them from a model")
        check_fingerprint(predictor.fingerprint, loaded.model, "predictor")
        return predictor

    predictor = await run_in_threadpool(prepare)

    def work(current: Loaded, cancel: Any) -> Any:
        return predictor.score(current.model, texts, batch_size=settings.batch_size, max_length=settings.max_length)

    scores = await wait(submit(state, work, f"predict/failure x{len(texts)}"), settings, until)
    return to_jsonable(
        {
            "predictor": predictor_summary(predictor, relative_to_root(state, folder)),
            "results": failure_results(texts, scores, body.top),
        }
    )


# --- anomaly detection -----------------------------------------------------------------------------
def fit_config(options: dict[str, Any] | None, per_token: bool, settings: Any, info: Any) -> Any:
    """The DetectorConfig of a fit on request texts, validated against the model (no weights used)."""
    from interpsuite_plugins.safety.anomaly import DetectorConfig

    options = dict(options or {})
    unknown = sorted(set(options) - set(FIT_OPTIONS))
    if unknown:
        raise ConfigError(f"fit: unknown option(s) {unknown}; valid are {', '.join(FIT_OPTIONS)}")
    config = DetectorConfig(
        **{"batch_size": settings.batch_size, "max_length": settings.max_length, **options, "token_scores": per_token}
    )
    try:
        return config.validate(info, "fit")
    except (TypeError, ValueError) as err:  # a value of the wrong type (e.g. "k": "ten")
        raise ConfigError(f"fit: {err}") from None


def anomaly_results(texts: list[str], scores: Any) -> list[dict]:
    results = []
    for i, text in enumerate(texts):
        entry: dict[str, Any] = {
            "text": text,
            "score": float(scores.score[i]),
            "anomalous": bool(scores.flags[i]),
            "threshold": float(scores.threshold),
            "layer_scores": {str(layer): float(scores.standardized[i, j]) for j, layer in enumerate(scores.layers)},
        }
        if scores.tokens is not None:
            entry["tokens"] = list(scores.tokens[i])
            entry["token_scores"] = scores.token_score[i].tolist()
            entry["token_anomalous"] = scores.token_flags[i].tolist()
        results.append(entry)
    return results


@router.post("/detect/anomaly", summary="Anomaly scores of texts against normal ones", responses=_ERRORS)
async def detect_anomaly(body: AnomalyRequest, state: ServerState = Depends(get_state)) -> dict:
    """Score texts with a saved anomaly detector (`detector`), or with one fitted in this request on
    `normal` texts (Mahalanobis by default; `fit` sets its options). A text is anomalous when its
    score is above the detector's threshold (held-out normal texts at the target false-positive rate)."""
    from interpsuite_plugins.safety.anomaly import AnomalyDetector
    from interpsuite_plugins.safety.texts import check_texts

    settings = state.settings
    until = deadline(settings)
    texts = body.text_list()
    if (body.detector is None) == (body.normal is None):
        raise ConfigError(
            "give exactly one of `detector` (a saved detector folder) or `normal` (texts to fit one on), not "
            + ("both" if body.detector is not None else "neither")
        )
    if body.fit is not None and body.normal is None:
        raise ConfigError("`fit` options apply to a detector fitted on `normal` texts; a saved detector has its own")
    check_limits(settings, [texts, *([body.normal] if body.normal is not None else [])])
    check_texts(texts, "detect/anomaly")
    loaded = state.current()

    if body.detector is not None:
        folder = resolve_artifact(settings, body.detector, "detector")

        def prepare() -> Any:
            detector = artifact_cache(state).get("anomaly_detector", folder, AnomalyDetector.load)
            check_fingerprint(detector.fingerprint, loaded.model, "detector")
            if body.per_token and detector.token_level is None:
                raise ConfigError("per_token: this detector was saved without token_scores; fit one with it")
            return detector

        detector = await run_in_threadpool(prepare)
        path: str | None = relative_to_root(state, folder)

        def work(current: Loaded, cancel: Any) -> Any:
            return detector, detector.score(
                current.model, texts, per_token=body.per_token, batch_size=settings.batch_size
            )

    else:
        normal = check_texts(list(body.normal or []), "normal")
        config = fit_config(body.fit, body.per_token, settings, loaded.model.info)
        config.check_sizes(len(normal), "normal")
        path = None

        def work(current: Loaded, cancel: Any) -> Any:
            fitted = AnomalyDetector.fit(current.model, normal, config)
            return fitted, fitted.score(current.model, texts, per_token=body.per_token, batch_size=settings.batch_size)

    detector, scores = await wait(submit(state, work, f"detect/anomaly x{len(texts)}"), settings, until)
    fingerprint = detector.fingerprint
    summary = {**detector.summary(), "path": path, "model": fingerprint.name, "fitted_on_request": path is None}
    return to_jsonable({"detector": summary, "results": anomaly_results(texts, scores)})
