"""Exceptions raised by lstmbench.

Every error a user can provoke with bad input is one of these, so callers can
catch ``LstmbenchError`` and the message always names the problem.  Each also
derives from the matching builtin (ValueError, TypeError, ...) so code that
already catches those keeps working.
"""


class LstmbenchError(Exception):
    """Base class of every error lstmbench raises on purpose."""


class ConfigError(LstmbenchError, ValueError):
    """A model, optimizer or run configuration is invalid."""


class ShapeError(LstmbenchError, ValueError):
    """An array has the wrong number of dimensions or the wrong sizes."""


class DTypeError(LstmbenchError, TypeError):
    """An array has the wrong dtype."""


class NonFiniteError(LstmbenchError, ValueError):
    """Input data contains NaN or infinity."""


class DataError(LstmbenchError, ValueError):
    """A dataset or file cannot be used: missing values, too short, unreadable."""


class UnknownBackendError(LstmbenchError, LookupError):
    """No backend of that name is registered."""


class BackendConflictError(LstmbenchError, LookupError):
    """Two plugins register the same backend name."""


class BackendLoadError(LstmbenchError, RuntimeError):
    """A backend's entry point failed to import, to construct, or gave no Backend."""


class BackendUnavailableError(LstmbenchError, RuntimeError):
    """The backend exists but cannot run on this machine (the message says why)."""


class UnsupportedError(LstmbenchError, NotImplementedError):
    """The backend declares that it does not support this configuration."""


class CheckpointError(LstmbenchError, ValueError):
    """A checkpoint is unreadable or does not match the model being loaded."""


class DivergenceError(LstmbenchError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class DeviceError(LstmbenchError, RuntimeError):
    """A GPU operation failed (out of memory, a failed kernel launch); the message names
    the step and the shape."""


class OutputError(LstmbenchError, OSError):
    """An output file or folder cannot be written (a file in the way, no permission, a full disk)."""


class ResourceError(LstmbenchError, MemoryError):
    """A run or a file needs more memory (or other machine resources) than this machine has;
    the message gives the figures."""


class BackendError(LstmbenchError, RuntimeError):
    """A backend returned what the protocol does not allow (an output of the wrong shape or
    dtype, NaN from finite inputs, a loss that is not a number): a bug in that backend, named
    in the message."""
