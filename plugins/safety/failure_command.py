"""`interpsuite predict-failure`: the failure probability of new prompts from a saved predictor.

    interpsuite predict-failure --predictor RUN_DIR/data/failure_prediction/predictor --text "The capital of Peru is"
    interpsuite predict-failure --predictor PATH --file prompts.txt   # one prompt per line
    interpsuite predict-failure --predictor PATH --text "17 + 25 = " --text "The capital of Chad is"

The predictor names the model it was fitted on (its fingerprint): that model is loaded with
`interpsuite.models.load_model` and checked against the fingerprint before anything is
scored. Inputs are read as `plugins/safety/command_inputs.py` says (shared with
`detect-anomaly`). For each prompt one tab-separated line: its index (line number in the
file), the probability that the model's answer is wrong and the
features that moved it most (their contributions to the logit, + towards failure). Every
problem (no such folder, a corrupt or foreign file, another model, an empty text) is one
`interpsuite: error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from interpsuite.commands import Command
from interpsuite.errors import ConfigError

from .command_inputs import add_text_arguments, read_command_texts


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictor", required=True, help="folder of a saved failure predictor")
    add_text_arguments(parser, "prompt")
    parser.add_argument("--top", type=int, default=3, help="features shown per prompt (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu)")


def _run(args: argparse.Namespace) -> int:
    from interpsuite.models import load_model

    from .failure import FailurePredictor

    if args.top < 1 or args.batch_size < 1:
        raise ConfigError("predict-failure: --top and --batch-size must be >= 1")
    inputs = read_command_texts(args, "predict-failure")  # before any weights load
    prompts = inputs.texts
    predictor = FailurePredictor.load(args.predictor)  # folder, kind, version, checksum: one line each
    fingerprint = predictor.fingerprint
    model = load_model(fingerprint.name, device=args.device)
    scores = predictor.score(model, prompts, batch_size=args.batch_size)  # refuses another model
    print(
        f"failure predictor for {fingerprint.name}: P(wrong answer) and the top {args.top} contributions to its logit"
    )
    if inputs.skipped_blank:
        print(f"predict-failure: skipped {inputs.skipped_blank} empty line(s) of {args.file}", file=sys.stderr)
    for row, (index, prompt) in enumerate(zip(inputs.indices, prompts, strict=True)):
        shown = prompt if len(prompt) <= 70 else prompt[:67] + "..."
        top = ", ".join(f"{name} {value:+.3f}" for name, value, _ in scores.top_features(row, args.top))
        print(f"{index}\t{scores.probability[row]:.3f}\t{shown!r}\t[{top}]")
    return 0


PREDICT_FAILURE = Command(
    "predict-failure",
    "probability that the model answers a prompt wrongly, from a saved failure predictor",
    _add_arguments,
    _run,
)
