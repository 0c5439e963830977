"""`interpsuite predict-failure`: the failure probability of new prompts from a saved predictor.

    interpsuite predict-failure --predictor RUN_DIR/data/failure_prediction/predictor --text "The capital of Peru is"
    interpsuite predict-failure --predictor PATH --file prompts.txt   # one prompt per line

The predictor names the model it was fitted on (its fingerprint): that model is loaded with
`interpsuite.models.load_model` and checked against the fingerprint before anything is
scored. For each prompt one line: the probability that the model's answer is wrong and the
features that moved it most (their contributions to the logit, + towards failure). Every
problem (no such folder, a corrupt or foreign file, another model, an empty text) is one
`interpsuite: error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interpsuite.commands import Command
from interpsuite.errors import ConfigError


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictor", required=True, help="folder of a saved failure predictor")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one prompt")
    source.add_argument("--file", help="a text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--top", type=int, default=3, help="features shown per prompt (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of --text or --file, refused with one line when empty or unreadable."""
    if args.text is not None:
        if not args.text.strip():
            raise ConfigError('predict-failure: --text is empty; give a prompt, e.g. --text "The capital of Peru is"')
        return [args.text]
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise ConfigError(f"predict-failure: --file {path} does not exist; give a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"predict-failure: --file {path} is not valid utf-8; save it as utf-8") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"predict-failure: --file {path} holds no prompts (only blank lines); one prompt per line")
    return prompts


def _run(args: argparse.Namespace) -> int:
    from interpsuite.models import load_model

    from .failure import FailurePredictor

    if args.top < 1 or args.batch_size < 1:
        raise ConfigError("predict-failure: --top and --batch-size must be >= 1")
    prompts = read_prompts(args)  # before any weights load
    predictor = FailurePredictor.load(args.predictor)  # folder, kind, version, checksum: one line each
    fingerprint = predictor.fingerprint
    model = load_model(fingerprint.name, device=args.device)
    scores = predictor.score(model, prompts, batch_size=args.batch_size)  # refuses another model
    print(
        f"failure predictor for {fingerprint.name}: P(wrong answer) and the top {args.top} contributions to its logit"
    )
    for row, prompt in enumerate(prompts):
        shown = prompt if len(prompt) <= 70 else prompt[:67] + "..."
        top = ", ".join(f"{name} {value:+.3f}" for name, value, _ in scores.top_features(row, args.top))
        print(f"{scores.probability[row]:.3f}  {shown!r}  [{top}]")
    return 0


PREDICT_FAILURE = Command(
    "predict-failure",
    "probability that the model answers a prompt wrongly, from a saved failure predictor",
    _add_arguments,
    _run,
)
