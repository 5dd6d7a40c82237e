"""Small helpers for the sentences vqkit prints."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """'1 image', '3 images': a count with its noun in the right number (regular plurals)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
