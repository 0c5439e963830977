"""`interpsuite detect-anomaly`: score texts with a saved anomaly detector.

    interpsuite detect-anomaly --detector RUN/data/anomaly_detection/detector --file texts.txt
    interpsuite detect-anomaly --detector PATH --text "Some text" [--text "another"] [--device cuda]

The detector is read (and verified) before any weights load; the model is the one its
fingerprint names (`load_model(name)`), and it is checked against the fingerprint, so a
detector is never applied to another model. Output on stdout, tab-separated: a header, then one
line per text (index, score, flag, the text with tabs and newlines shown as spaces). A file is
read one text per line; empty (or whitespace-only) lines are skipped with a note on stderr, and
`index` is the line number in the file, so each score can be traced back to its line. An empty
`--text` is refused. Every error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from interpsuite.commands import Command
from interpsuite.errors import ConfigError

from .command_inputs import add_text_arguments, read_command_texts

#: characters of each text echoed in the output (the score is of the whole text)
PREVIEW = 80


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="folder of a saved anomaly detector")
    add_text_arguments(parser, "text")
    parser.add_argument("--device", default="cpu", help="device for the model (cpu, cuda, mps); default cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default 16)")


def _run(args: argparse.Namespace) -> int:
    from interpsuite.artifacts import load_artifact
    from interpsuite.models import load_model

    from .anomaly import KIND, AnomalyDetector

    if args.batch_size < 1:
        raise ConfigError(f"detect-anomaly: --batch-size {args.batch_size}; give a positive number")
    inputs = read_command_texts(args, "detect-anomaly")
    indices, texts, skipped = inputs.indices, inputs.texts, inputs.skipped_blank
    artifact = load_artifact(args.detector, KIND, "detect-anomaly --detector")  # before any weights load
    model = load_model(artifact.model.name, device=args.device)
    detector = AnomalyDetector.load(args.detector, model=model)
    if skipped:
        print(f"detect-anomaly: skipped {skipped} empty line(s) of {args.file}", file=sys.stderr)
    scores = detector.score(model, texts, batch_size=args.batch_size)
    print(f"# threshold {detector.text_level.threshold:.6g} (fpr target {detector.config.fpr})", file=sys.stderr)
    print("index\tscore\tflag\ttext")
    for index, text, score, flag in zip(indices, texts, scores.score.tolist(), scores.flags.tolist(), strict=True):
        preview = " ".join(text.split())
        if len(preview) > PREVIEW:
            preview = preview[: PREVIEW - 3] + "..."
        print(f"{index}\t{score:.6g}\t{'anomalous' if flag else 'normal'}\t{preview}")
    return 0


DETECT_ANOMALY = Command(
    "detect-anomaly",
    "score texts with a saved anomaly detector (prints each text's score and flag)",
    _add_arguments,
    _run,
)
