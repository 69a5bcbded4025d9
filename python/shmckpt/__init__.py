"""shmckpt: asynchronous, crash-safe checkpoints for PyTorch trainers.

A native checkpoint child (no Python in it) writes state dicts handed over through shared
memory, durably, while training goes on. See docs/python.md.

    import shmckpt
    with shmckpt.AsyncCheckpointer() as ck:
        staging, write = ck.save("ckpt/step_100", {"model": model.state_dict(),
                                                   "optimizer": opt.state_dict()})
        ...                      # forward / backward overlap the snapshot
        staging.result()         # before the next optimizer.step()
    sd = shmckpt.load(shmckpt.latest_checkpoint("ckpt"))
"""

from . import _core
from ._errors import (ChildFailedError, ChildTerminatedError, ClosedError, CorruptDataError,
                      Error, InvalidArgumentError, IOFailureError, NoSpaceError, NotFoundError,
                      ProtocolError, TimeoutError, UnsupportedError, _classes)
from ._checkpointer import (AsyncCheckpointer, CheckpointProcess, MissingKeysWarning,
                            SyncCheckpointer, detect_rank_info, keep_last, latest_checkpoint,
                            load)

_core._set_error_classes(_classes())

__version__ = _core.library_version()

__all__ = [
    "AsyncCheckpointer", "SyncCheckpointer", "CheckpointProcess", "load", "latest_checkpoint",
    "keep_last", "detect_rank_info", "MissingKeysWarning", "Error", "InvalidArgumentError",
    "CorruptDataError", "NotFoundError", "NoSpaceError", "IOFailureError", "TimeoutError",
    "ChildFailedError", "ChildTerminatedError", "ProtocolError", "ClosedError",
    "UnsupportedError",
]
