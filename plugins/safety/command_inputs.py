"""The texts a safety command scores: `--text` (repeatable) or `--file` (one text per line).

`predict-failure` and `detect-anomaly` read their inputs the same way, so users learn one
rule: blank lines of a file are skipped (and counted), every other line is one text, and the
index printed with each score is the text's line number in the file (its position among the
`--text` values otherwise), so each score traces back to its input.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from interpsuite.errors import ConfigError


@dataclass
class CommandTexts:
    texts: list[str]
    indices: list[int]  # line numbers in --file, or 0-based positions among --text values
    skipped_blank: int = 0


def add_text_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help=f"one {what} (repeat for several)")
    source.add_argument("--file", help=f"a UTF-8 text file, one {what} per line (blank lines are skipped)")


def read_command_texts(args: argparse.Namespace, command: str) -> CommandTexts:
    """The texts of --text or --file; an empty --text, a missing, non-UTF-8 or blank file is one line."""
    if args.text is not None:
        for position, text in enumerate(args.text):
            if not text.strip():
                raise ConfigError(f"{command}: --text number {position + 1} is empty; give a text, or leave it out")
        return CommandTexts(list(args.text), list(range(len(args.text))))
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise ConfigError(f"{command}: --file {path} does not exist or is not a file; give a text file, one per line")
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        byte = f"byte 0x{raw[err.start]:02x} on line {line}"
        raise ConfigError(f"{command}: --file {path} is not UTF-8 ({byte}); save it as UTF-8") from None
    kept = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not kept:
        raise ConfigError(f"{command}: --file {path} has only blank lines; give one text per line")
    return CommandTexts([text for _, text in kept], [number for number, _ in kept], len(lines) - len(kept))
