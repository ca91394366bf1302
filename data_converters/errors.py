"""Exceptions of the converters: one for a case that cannot be converted, one for a run
that cannot start."""


class SkipCase(Exception):
    """A case cannot be converted (bad or missing input). The run records ``reason``,
    counts the case as skipped and goes on with the next one."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConverterError(Exception):
    """The run cannot start or finish (bad flag value, unusable output folder). The CLI
    prints the message as one line, without a traceback, and exits with status 2."""
