"""concurrent.futures.Future objects resolved from the C++ futures of shmckpt._core.

A `_Resolver` owns one daemon thread that takes (waitable, future) pairs in order, waits for each
C++ future with the GIL released (in short slices, so that close() can stop it), and then sets the
Python future's result or exception. C++ threads never touch the interpreter: all Python work
happens on this thread, which the owning object joins in close() (and at interpreter exit, see
shmckpt._checkpointer), so nothing is left waiting in C++ while the interpreter finalises.
"""

import collections
import concurrent.futures
import threading

_SLICE = 0.1  # seconds per GIL-released wait


class _Resolver:
    def __init__(self, name):
        self._name = name
        self._queue = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = None

    def add(self, waitable):
        """A running Future that resolves when `waitable` does; items resolve in order."""
        fut = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # the write cannot be cancelled
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"{self._name}: resolver already closed")
            self._queue.append((waitable, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return fut

    def _run(self):
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                waitable, fut = self._queue[0]
            while not waitable.wait(_SLICE):
                pass
            try:
                waitable.result()
            except BaseException as e:  # noqa: B902 - handed to the future
                fut.set_exception(e)
            else:
                fut.set_result(None)
            finally:
                waitable.release()
            with self._cond:
                self._queue.popleft()
            del waitable, fut

    def close(self, timeout=None):
        """Resolves what is queued (its C++ futures must all become ready), then stops."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
