"""The shmckpt.Error hierarchy: one class per shmckpt::errc, carrying the C++ message."""

import builtins

__all__ = [
    "Error", "InvalidArgumentError", "CorruptDataError", "NotFoundError", "NoSpaceError",
    "IOFailureError", "TimeoutError", "ChildFailedError", "ChildTerminatedError",
    "ProtocolError", "ClosedError", "UnsupportedError",
]


class Error(Exception):
    """Every failure shmckpt reports. ``errc`` names the shmckpt::errc value; ``str(e)`` is the
    C++ message (what failed, the values involved, what to do)."""

    errc = None


class InvalidArgumentError(Error, ValueError):
    """The caller passed something unusable (bad path, option, value or shape)."""
    errc = "invalid_argument"


class CorruptDataError(Error):
    """Bytes from a file or from the checkpoint child are malformed."""
    errc = "corrupt_data"


class NotFoundError(Error, LookupError):
    """A file, key, checkpoint, init function or writer factory does not exist."""
    errc = "not_found"


class NoSpaceError(Error):
    """Shared memory or disk has no room for the request."""
    errc = "no_space"


class IOFailureError(Error, OSError):
    """The operating system refused a read, write, fsync, rename or map."""
    errc = "io_error"


class TimeoutError(Error, builtins.TimeoutError):
    """A deadline expired (init, shutdown, staging, the commit barrier)."""
    errc = "timeout"


class ChildFailedError(Error):
    """The checkpoint child reported an error (init function, writer factory, writer)."""
    errc = "child_failed"


class ChildTerminatedError(Error):
    """The checkpoint child died ("Child process terminated unexpectedly ...")."""
    errc = "child_terminated"


class ProtocolError(Error):
    """The checkpoint child spoke another protocol version or sent a bad frame."""
    errc = "protocol_error"


class ClosedError(Error):
    """The object was used after close()."""
    errc = "closed"


class UnsupportedError(Error):
    """The system or this build lacks a required facility (a dtype, memfd, pidfd)."""
    errc = "unsupported"


def _classes():
    out = {"error": Error}
    for cls in (InvalidArgumentError, CorruptDataError, NotFoundError, NoSpaceError,
                IOFailureError, TimeoutError, ChildFailedError, ChildTerminatedError,
                ProtocolError, ClosedError, UnsupportedError):
        out[cls.errc] = cls
    return out


for _cls in _classes().values():
    _cls.__module__ = "shmckpt"
del _cls
