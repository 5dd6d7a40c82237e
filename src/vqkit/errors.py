"""The one exception type that reaches users as a sentence instead of a traceback."""


class VqkitError(Exception):
    """A user-facing failure: bad input, damaged file, unusable run folder.

    The message is one complete sentence saying what is wrong and, where it helps, what to do.
    The CLI prints it and exits with status 2; library callers can catch it.
    """


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
