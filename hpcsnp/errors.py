"""The exceptions users see.

Every error a user can act on is an ``HpcsnpError``; the CLI prints its
message on one line and exits with its ``exit_code`` (2 for bad input or
usage, 1 for failures of a run).  Anything else is an internal error.
"""


class HpcsnpError(Exception):
    """Base class: a message a user can act on."""

    exit_code = 1


class InputError(HpcsnpError):
    """Bad input data or arguments (exit code 2)."""

    exit_code = 2


class ParseError(InputError):
    """A text input that breaks the format, located to file, line and column."""

    def __init__(self, path, line, message, column=None, column_name=None):
        where = f"{path}:{line}"
        if column is not None:
            where += f": column {column}"
            if column_name:
                where += f" ({column_name})"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column = str(path), line, column


class StoreError(InputError):
    """A Zarr store that is missing, incomplete or of another format version."""


class IncompleteRunError(HpcsnpError):
    """A run directory with folds missing or half-written."""

    def __init__(self, message, missing):
        super().__init__(message)
        self.missing = missing


class FoldBusyError(HpcsnpError):
    """The fold is locked by another live process (exit code 1)."""


class FoldFailedError(HpcsnpError):
    """One or more fold processes failed."""


class Terminated(BaseException):
    """SIGTERM (preemption, scancel, the end of a time limit): exit 143 after saying so.

    A BaseException, as KeyboardInterrupt is: the signal's handler raises it wherever the
    main thread is, and library code that catches Exception there must not turn it into
    another error (TensorFlow re-raises anything raised while it binds a compiled
    function's arguments as a TypeError)."""

    exit_code = 143
