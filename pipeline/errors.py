"""Error types that the CLI turns into one-line messages and exit codes."""


class InputError(ValueError):
    """Bad user input (file, image, parameter): reported in one line, exit code 2."""


class SourceMissingError(RuntimeError):
    """A weight source or model that is not installed here: the message says how to get it."""
