"""The public objects: AsyncCheckpointer, SyncCheckpointer, CheckpointProcess, load, ..."""

import atexit
import os
import threading
import warnings
import weakref

from . import _core, _store
from ._futures import _Resolver

__all__ = ["AsyncCheckpointer", "SyncCheckpointer", "CheckpointProcess", "load",
           "latest_checkpoint", "keep_last", "detect_rank_info", "MissingKeysWarning"]


class MissingKeysWarning(UserWarning):
    """A non-strict load into a template found keys of the template missing in the checkpoint."""


# Objects still open, closed at interpreter exit (before daemon threads stop): their queued
# writes finish, and no resolver thread is left inside a C++ wait while the interpreter finalises.
_live = weakref.WeakSet()
_live_lock = threading.Lock()


def _after_fork_in_child():
    # The child of a fork() has the objects but none of their threads or their checkpoint child:
    # never run their C++ destructors there (they would wait for threads that do not exist).
    with _live_lock:
        objs = list(_live)
    for obj in objs:
        core = getattr(obj, "_core", None)
        if core is not None:
            _core._leak(core)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _register(obj):
    obj._pid = os.getpid()
    with _live_lock:
        _live.add(obj)


@atexit.register
def _close_all():
    with _live_lock:
        objs = list(_live)
    for obj in objs:
        try:
            if obj._mine():
                obj.close()
        except Exception:  # noqa: BLE001 - exiting; each close reports through its futures
            pass


def _report_missing(path, missing, stacklevel=3):
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        warnings.warn(f"checkpoint {os.fspath(path)} lacks {len(missing)} key(s) of the "
                      f"template, left unchanged: {shown}", MissingKeysWarning,
                      stacklevel=stacklevel)


class _Closing:
    # The process that made the object: a forked child (a DataLoader worker) inherits the object
    # but not the threads behind it, and must never try to close it.
    _pid = None

    def _mine(self):
        return self._pid == os.getpid()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            if self._mine():
                self.close()
        except Exception:  # noqa: BLE001 - finaliser
            pass


class _Committing(_Closing):
    """What commits across ranks: the barrier it commits through (barrier=, store_scope=)."""

    _server = None

    def _configure(self, config, name):
        # barrier=: None (torch.distributed's store when it is initialised, else the file
        # barrier), "file", "store", or a torch.distributed.Store. See docs/python.md.
        config = dict(config)
        store = _store.resolve(config.pop("barrier", None))
        if store is not None:
            if config.get("rank") is None and config.get("world_size") is None:
                rw = _store.default_rank()
                if rw is not None:
                    config["rank"], config["world_size"] = rw
            self._server = _store.StoreServer(store, name)
            config["commit_store"] = self._server.bridge
        return config

    def _close_server(self):
        if self._server is not None:
            self._server.close()

    @property
    def barrier(self):
        """"store" when saves commit through a distributed store, else "file"."""
        return "store" if self._server is not None else "file"


class _Checkpointer(_Committing):
    """What both checkpointers share: load, the rank they save as, and the barrier they commit
    through."""

    def load(self, path, state_dict=None, *, strict=False, allow_incomplete=False,
             verify_checksums=False):
        """This rank's file of checkpoint `path`; see shmckpt.load."""
        sd, missing = self._core.load(path, state_dict, strict, allow_incomplete,
                                      verify_checksums)
        _report_missing(path, missing)
        return sd

    @property
    def rank(self):
        return self._core.rank[0]

    @property
    def world_size(self):
        return self._core.rank[1]


class AsyncCheckpointer(_Checkpointer):
    """Snapshots state dicts into shared memory on a background thread and writes them durably
    in a native checkpoint child (shmckpt::async_checkpointer).

    Options (keyword arguments; C++ defaults): segment_bytes (0: the shared segment grows as
    needed; else its cap), initial_segment_bytes (64 MiB, prefaulted at start),
    progress_timeout (300 s without progress fails a write), staging_threads (0: one per
    core, at most 4), staging_generations (2), staging_timeout (600 s), init_timeout (30 s), shutdown_timeout
    (60 s), commit_timeout (600 s), prefault (True), rank and world_size (from RANK/WORLD_SIZE,
    OMPI_*, PMI_*, SLURM_* unless given), worker_path, writer_factory, writer_args,
    init_function, init_args, and the child's priority: child_nice, child_policy ("inherit",
    "normal", "batch", "idle"), child_io_class ("inherit", "best_effort", "idle"),
    child_io_level (0-7), child_cpus (a list of CPU numbers). Times are in seconds.

    barrier: how the ranks commit. None (the default): through torch.distributed's store when
    torch.distributed is initialised (then rank and world_size default to its own), else the
    file barrier; "file": the file barrier; "store": torch.distributed's store (required); or a
    torch.distributed.Store to commit through. store_scope names this checkpointer's keys
    (default: counted per process; the same on every rank when ranks make their checkpointers
    in the same order).
    """

    def __init__(self, **config):
        config = self._configure(config, "shmckpt-store")
        try:
            self._core = _core.AsyncCheckpointer(config)
        except BaseException:
            self._close_server()
            raise
        self._staging = _Resolver("shmckpt-staging")
        self._writes = _Resolver("shmckpt-write")
        self._closed = False
        _register(self)

    def save(self, path, state_dict, **kwargs):
        """Queues a checkpoint of `state_dict` into directory `path`; returns (staging, write),
        two concurrent.futures.Future: `staging` is done once the snapshot is taken (tensors
        may change again), `write` once the checkpoint is durable and committed. A write that
        failed raises from its future and once more from the next save()."""
        staging, write = self._core.save(path, state_dict, kwargs)
        return self._staging.add(staging), self._writes.add(write)

    @property
    def child_pid(self):
        return self._core.child_pid

    def close(self):
        """Waits for every queued write (bounded by shutdown_timeout), stops the child, and
        raises the first failure of a save that no save() has raised yet. Idempotent."""
        if getattr(self, "_closed", True) or not self._mine():
            return
        self._closed = True
        try:
            self._core.close()  # raises a last failure that no save() raised
        finally:
            self._close_server()  # after the core: its last commits still use the store
            self._staging.close()
            self._writes.close()


class SyncCheckpointer(_Checkpointer):
    """Writes checkpoints in the calling process: save() returns once the checkpoint is durable
    and committed (shmckpt::sync_checkpointer). Options: rank, world_size, commit_timeout,
    barrier, store_scope (as for AsyncCheckpointer)."""

    def __init__(self, **config):
        config = self._configure(config, "shmckpt-store")
        try:
            self._core = _core.SyncCheckpointer(config)
        except BaseException:
            self._close_server()
            raise
        _register(self)

    def save(self, path, state_dict, **kwargs):
        self._core.save(path, state_dict, kwargs)

    def close(self):
        if hasattr(self, "_core") and self._mine():
            self._core.close()
            self._close_server()


class CheckpointProcess(_Committing):
    """One long-lived native checkpoint child (shmckpt::checkpoint_process).

    Options: segment_bytes (0: grows as needed; else its cap), initial_segment_bytes (64 MiB),
    init_timeout (30 s), shutdown_timeout (60 s), progress_timeout (300 s), prefault,
    worker_path (a child binary that registers init functions and writer factories),
    init_function / init_args, writer_factory ("default") / writer_args, rank, world_size,
    child_nice / child_policy / child_io_class / child_io_level / child_cpus (the child's
    priority, as for AsyncCheckpointer), and barrier / store_scope / commit_timeout (600 s):
    how the default writer's ranks commit, as for AsyncCheckpointer (through torch.distributed's
    store when it is initialised, else the file barrier in the child).
    """

    def __init__(self, **options):
        options = self._configure(options, "shmckpt-process-store")
        try:
            self._core = _core.CheckpointProcess(options)
        except BaseException:
            self._close_server()
            raise
        self._writes = _Resolver("shmckpt-process-write")
        self._closed = False
        _register(self)

    def wait_ready(self):
        """Blocks until the child is initialised (at most init_timeout); raises
        shmckpt.TimeoutError, ChildFailedError (the child's message) or ChildTerminatedError."""
        self._core.wait_ready()

    def write(self, state_dict, path, **kwargs):
        """Writes `state_dict` to `path` in the child; returns a Future done when durable.
        Tensors from empty() are handed over without a copy; others are copied into the
        shared segment before this returns."""
        return self._writes.add(self._core.write(state_dict, path, kwargs))

    def empty(self, shape, dtype=None):
        """A zero-filled torch tensor whose storage is in the shared segment: writing it costs
        no copy, and the child's changes to it are seen here. It keeps its memory alive."""
        if dtype is None:
            import torch
            dtype = torch.float32
        return self._core.empty(shape, dtype)

    def is_shared(self, tensor):
        """Whether `tensor`'s bytes lie in this process's shared segment."""
        return self._core.is_shared(tensor)

    @property
    def segment_free_bytes(self):
        return self._core.segment_free_bytes

    @property
    def pid(self):
        """The child's pid."""
        return self._core.child_pid

    @property
    def child_running(self):
        return self._core.child_running

    def close(self):
        """Finishes queued writes, sends TERMINATE, waits up to shutdown_timeout, then kills
        the child. Idempotent."""
        if getattr(self, "_closed", True) or not self._mine():
            return
        self._closed = True
        try:
            self._core.close()
        finally:
            self._close_server()  # after the core: its last commits still use the store
            self._writes.close()


def load(path, state_dict=None, *, strict=False, rank=None, allow_incomplete=False,
         verify_checksums=False):
    """Loads a checkpoint file, or this rank's file in a checkpoint directory.

    Without `state_dict`: returns the nested state dict (dicts with str or int keys, lists,
    tuples, scalars, and torch tensors viewing the file's private mapping, zero copy). With a
    template: reads only its keys, straight into its tensors (same dtype and shape required,
    else InvalidArgumentError), replaces its non-tensor leaves, and returns the filled copy whose
    tensors are the template's own objects. Keys the file lacks are a MissingKeysWarning, or
    NotFoundError with strict=True. A directory without a manifest is NotFoundError unless
    allow_incomplete=True. `rank` defaults to the launcher's (RANK, ...) or 0.
    """
    sd, missing = _core.load(path, state_dict, strict, allow_incomplete, verify_checksums, rank)
    _report_missing(path, missing)
    return sd


def latest_checkpoint(root):
    """The complete checkpoint directory under `root` with the newest manifest, or None."""
    return _core.latest_checkpoint(root)


def keep_last(root, n):
    """Deletes all but the `n` newest complete checkpoints under `root` (and incomplete ones
    older than the newest complete one); returns the directories removed."""
    return _core.keep_last(root, n)


def detect_rank_info():
    """(rank, world_size) from RANK/WORLD_SIZE, OMPI_*, PMI_* or SLURM_*; (0, 1) otherwise."""
    return _core.detect_rank_info()
