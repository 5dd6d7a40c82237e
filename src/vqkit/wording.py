"""Small helpers for the sentences vqkit prints."""

from __future__ import annotations

import signal
import unicodedata


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 image', '3 images': a count with its noun in the right number (``plural`` for a noun
    whose plural is not the noun and an s: '2 processes')."""
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def some_of(values: list, shown: int = 6) -> str:
    """'3, 5 and 9', or for a long list its first ``shown`` and how many more: '0, 1, 2, 3, 4,
    5 and 83 more'."""
    words = [str(value) for value in values]
    if len(words) > shown + 1:
        words = [*words[:shown], f"{len(values) - shown} more"]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def images_counted(count: int, noun: str = "image") -> str:
    """'1 image', '10,000 images': a count with thousands separators and its noun."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def on_test_images(metrics: dict) -> str:
    """Where test metrics were measured, from a metrics record: 'on the 1,000 test images'
    (a run's --test-limit, or the whole split), or 'on the test set' for a record written
    before records counted their images."""
    count = metrics.get("test_images")
    if isinstance(count, int) and not isinstance(count, bool):
        return f"on the {images_counted(count, 'test image')}"
    return "on the test set"


def stopped_by(signal_number: int) -> str:
    """How a stop signal is named in vqkit's last line: Ctrl-C interrupts, SIGTERM stops."""
    return "interrupted" if signal_number == signal.SIGINT else "stopped by SIGTERM"


# Control and format characters, line and paragraph separators, lone surrogates: not the
# spaces other than ' ' (str.isprintable refuses those too, and macOS names screenshots with
# U+202F, which must stay a copyable part of the path).
ESCAPED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them: a path holding a
    newline split a refusal over two lines, the second looking like a message of its own, and
    text from a run's files (a preset name in its config.json) could drive the terminal."""
    return "".join(
        repr(c)[1:-1] if unicodedata.category(c) in ESCAPED_CATEGORIES else c for c in text
    )
