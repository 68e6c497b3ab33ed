"""Thread helpers with no dependencies, usable from every layer."""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
import weakref


def lower_thread_priority(niceness: int = 19) -> None:
    """Make the calling thread yield the CPU to request threads (Linux: a thread has its own
    nice value). Background batches keep a core busy for seconds; at normal priority an
    embedding worker took a quarter of observe's throughput on a 2-core machine. Elsewhere this
    is a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class SignalSafeFlag:
    """A one-way mark ("stop") that a signal handler may set, in place of a ``threading.Event``.

    ``Event.set`` takes the event's lock. A Python signal handler runs in the main thread between
    two bytecodes, possibly while that same thread holds that lock: inside ``Event.wait``, or
    inside the handler of a first signal when a second one arrives (a node's stop signals a
    request process twice: the group's SIGTERM, then gunicorn's). The handler then waits for
    itself forever, and the process never stops. Setting this flag takes no lock: it stores
    ``True`` and writes one byte to a non-blocking pipe (``os.write`` takes no lock either; a
    full pipe is already readable). Waiters sleep in ``poll`` on the pipe's read end until the
    byte arrives or their timeout ends, so an idle waiter is never woken (it used to look at
    the flag every 50 ms). The byte is never read: the pipe stays readable for every later wait.

    The pipe is made by the first ``wait`` (a flag nobody waits on, such as most runtimes' hub
    mark, holds no descriptors) and closed when the flag is collected. A forked child gets pipes
    of its own (``_renew_after_fork``): it would otherwise share its parent's, and a stop of the
    parent would wake the child's waiters on a flag that the child never set."""

    def __init__(self) -> None:
        self._set = False
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        self._pipe_lock = threading.Lock()  # waiters only: set() never takes it

    def set(self) -> None:
        self._set = True  # one store under the GIL, before the fd is read (see _pipe)
        write_fd = self._write_fd
        if write_fd is not None:
            try:
                os.write(write_fd, b"\0")
            except OSError:  # full (already readable) or closed by a fork's renewal: nothing to wake
                pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether the flag was set within ``timeout`` seconds."""
        if self._set:
            return True
        poller = select.poll()
        poller.register(self._pipe(), select.POLLIN)
        deadline = time.monotonic() + timeout
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(math.ceil(left * 1000))  # a signal's handler runs and poll resumes (PEP 475)
        return True

    def _pipe(self) -> int:
        """The read end of this flag's pipe, made on first use. The write end is published after
        the read end exists, and set() stores the mark before it reads the write end: a set() that
        found no pipe yet is seen by the waiter's check of the mark after this returns."""
        with self._pipe_lock:
            if self._read_fd is None:
                read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._read_fd = read_fd
                self._write_fd = write_fd
                _FLAGS_WITH_PIPES.add(self)
                if self._set:
                    self.set()
            return self._read_fd

    def _close_pipe(self) -> None:
        read_fd, write_fd = self._read_fd, self._write_fd
        self._read_fd = self._write_fd = None
        for fd in (write_fd, read_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _renew_after_fork(self) -> None:
        """In a forked child (one thread, nobody waiting): drop the parent's pipe; the child's
        first wait makes its own."""
        self._pipe_lock = threading.Lock()
        self._close_pipe()

    def __del__(self) -> None:
        self._close_pipe()  # a waiter holds a reference: nobody polls these descriptors any more


_FLAGS_WITH_PIPES: weakref.WeakSet[SignalSafeFlag] = weakref.WeakSet()


def _renew_pipes_in_child() -> None:
    for flag in list(_FLAGS_WITH_PIPES):
        flag._renew_after_fork()


os.register_at_fork(after_in_child=_renew_pipes_in_child)
