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
from pathlib import Path

from interpsuite.commands import Command
from interpsuite.errors import ConfigError

#: characters of each text echoed in the output (the score is of the whole text)
PREVIEW = 80


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="folder of a saved anomaly detector")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="texts to score, one per line (empty lines are skipped)")
    source.add_argument("--text", action="append", help="a text to score (repeat for several)")
    parser.add_argument("--device", default="cpu", help="device for the model (cpu, cuda, mps); default cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default 16)")


def _read_file(path: str) -> tuple[list[int], list[str], int]:
    """(line numbers, texts, skipped empty lines) of a UTF-8 text file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"detect-anomaly: --file {file} does not exist or is not a file; give a text file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        reason = f"{err.reason} at byte {err.start}"
        raise ConfigError(f"detect-anomaly: --file {file} is not UTF-8 text ({reason})") from None
    kept = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not kept:
        raise ConfigError(f"detect-anomaly: --file {file} has no non-empty line; give one text per line")
    return [n for n, _ in kept], [t for _, t in kept], len(lines) - len(kept)


def _run(args: argparse.Namespace) -> int:
    from interpsuite.artifacts import load_artifact
    from interpsuite.models import load_model

    from .anomaly import KIND, AnomalyDetector, check_texts

    if args.batch_size < 1:
        raise ConfigError(f"detect-anomaly: --batch-size {args.batch_size}; give a positive number")
    if args.file is not None:
        indices, texts, skipped = _read_file(args.file)
    else:
        texts = check_texts(args.text, "detect-anomaly --text")
        indices, skipped = list(range(len(texts))), 0
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
