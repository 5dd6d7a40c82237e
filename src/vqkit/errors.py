"""The exception types that reach users as a sentence instead of a traceback, and the
sentence for an allocation that failed."""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterator

# What PyTorch says when a tensor's byte count does not fit 64 bits (on any device, meta too).
SIZE_OVERFLOW = "Storage size calculation overflowed"


class VqkitError(Exception):
    """A user-facing failure: bad input, damaged file, unusable run folder.

    The message is one complete sentence saying what is wrong and, where it helps, what to do.
    The CLI prints it and exits with status 2; library callers can catch it.
    """


class InvalidValue(VqkitError, ValueError):
    """An argument of a vqkit function, or a setting, that vqkit refuses: a tensor of the wrong
    shape or kind, a count that is not a whole number, an unknown name. A ValueError too, as
    Python's own checks raise, so ``except ValueError`` catches it; a damaged file or an
    unusable run folder stays a plain VqkitError."""


class NonFiniteLoss(VqkitError):
    """Training stopped at a non-finite loss; ``cause`` is the sentence's first part (which
    step, which terms), before its advice on what to do."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class UnknownQuantizer(VqkitError):
    """A config names a quantizer no code here has registered (``name``): a run made with a
    quantizer of one's own, opened without the code that registers it."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class QuantizerLoadError(UnknownQuantizer):
    """An installed package offers quantizer ``name``, but its code failed to import."""


def refused_file(path: object, exc: VqkitError) -> VqkitError:
    """The refusal of a setting read from the file ``path``: the check's sentence names the flag
    that sets the value, so it is prefixed with the file that holds it."""
    sentence = str(exc)
    if len(sentence) > 1 and sentence[0].isupper() and sentence[1].islower():  # not "FSQ ..."
        sentence = sentence[0].lower() + sentence[1:]
    return VqkitError(f"'{path}' cannot be used: {sentence}")


class OutOfMemory(VqkitError):
    """An allocation failed inside a public function; ``failure`` is PyTorch's message, which
    the command line words again naming its own flag instead of the argument. (PyTorch's error
    stays as the context without its traceback, whose frames would hold the tensors.)"""

    def __init__(self, message: str, failure: str = "") -> None:
        super().__init__(message)
        self.failure = failure


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: Python's, the CPU allocator's, a GPU's, or
    a size no 64-bit machine could hold."""
    text = str(exc)
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"  # torch's, on a GPU
        or "can't allocate memory" in text
        or "not enough memory" in text
        or SIZE_OVERFLOW in text
    )


def out_of_memory_sentence(text: str, less: str | None = None) -> str:
    """The sentence for an allocation that failed with the message ``text``, with how much it
    asked for where PyTorch says it; ``less`` names what the caller can ask less of."""
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" ({int(asked.group(1)) / 2**30:.1f} GiB at once)" if asked else ""
    if SIZE_OVERFLOW in text:
        size = " (more bytes at once than a 64-bit machine can address)"
    if less is None:
        return f"Out of memory{size}; free some memory or use a machine with more."
    return f"Out of memory{size}; ask for less at once: {less}."


@contextlib.contextmanager
def out_of_memory_said(less: str) -> Iterator[None]:
    """An allocation failing inside becomes :class:`OutOfMemory`, one sentence saying what to
    ask less of (``less``: "a smaller n"), instead of PyTorch's own error."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        # Its frames would keep the tensors (a GPU's memory) alive while the error is kept,
        # and contextlib's frame in the new error's traceback still refers to them.
        traceback.clear_frames(exc.__traceback__)
        exc.__traceback__ = None
        failure = str(exc)
        raise OutOfMemory(out_of_memory_sentence(failure, less), failure) from None
