"""Completing the answer tables a bounded filter call left partial, off the request path.

A filter call from kube-scheduler works out new verdicts for at most the settings'
``filter_budget_ms`` (``Extender.filter_request``) and defers the names it did not reach.
``Filler`` then works out every node the shape's table still lacks, on one daemon thread, in
batches of at most ``BATCH_S`` under the tables' lock (``Extender.fill_step``), handing the
GIL back between batches, and only once no filter or prioritize call has been under way for
``IDLE_S`` (``call``): a request waits for at most one batch, and the next pod of that shape
finds a full table. While calls come back to back the thread waits, and each bounded call of
the shape decides its budget's worth instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flexai_core.model import PodRequest

from .policies.interface import Policy

log = logging.getLogger("flexai_sched.filling")
BATCH_S = 0.0005  # at most this much work per batch: the longest a request waits for the GIL and the lock
# The calls of one pod (filter, prioritize, then the next pod's) come less than this apart when
# kube-scheduler is busy: the fill then waits, and takes no CPU from the calls around it.
IDLE_S = 0.005


@dataclass(slots=True, eq=False)
class FillJob:
    """One pass over the cluster's nodes for a shape's table (``Extender._key``/``_host_key``)."""

    key: int
    hkey: int
    req: PodRequest  # a pod of that shape: what the verdicts are worked out for
    policy: Policy  # its node policy
    names: list[str] | None = None  # the nodes to go over, taken at the first batch
    at: int = 0  # how many of ``names`` are done
    again: bool = False  # asked for again while under way: one more pass when this one ends


class Filler:
    """The jobs, one per table, worked through by ``step`` (one batch; True when the pass is over).

    ``background`` False (tests): nothing runs until ``drain``.
    """

    def __init__(self, step: Callable[[FillJob], bool], background: bool = True) -> None:
        self._step = step
        self.background = background
        self._jobs: OrderedDict[tuple[int, int], FillJob] = OrderedDict()
        self._cv = threading.Condition()
        self._busy = False
        self._calls = 0  # filter and prioritize calls under way
        self._last = 0.0  # when the last one ended (time.monotonic)
        self._thread: threading.Thread | None = None

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around a filter or prioritize call: no batch starts meanwhile."""
        with self._cv:
            self._calls += 1
        try:
            yield
        finally:
            with self._cv:
                self._calls -= 1
                self._last = time.monotonic()
                if self._jobs:  # the thread waits for this only with work queued: no wake-up per call
                    self._cv.notify_all()

    def want(self, job: FillJob) -> None:
        """Fill ``job``'s table (a job for that table already queued goes over it once more)."""
        with self._cv:
            queued = self._jobs.get((job.key, job.hkey))
            if queued is None:
                self._jobs[(job.key, job.hkey)] = job
            else:
                queued.again = True
            if self.background and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="table-fill", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._jobs)

    def drain(self) -> None:
        """Run every queued job to its end in the calling thread."""
        while self._one():
            pass

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; False if ``timeout`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    self._cv.wait_for(lambda: bool(self._jobs) and not self._calls)
                    quiet = time.monotonic() - self._last
                    if quiet >= IDLE_S:
                        break
                    self._cv.wait(IDLE_S - quiet)  # a call may start meanwhile: then wait for it
            self._one()
            time.sleep(0)  # a request waiting for the GIL takes it here, between batches

    def _one(self) -> bool:
        """One batch of the oldest job; False if there was none."""
        with self._cv:
            if not self._jobs or self._busy:
                return False
            table, job = next(iter(self._jobs.items()))
            self._busy = True
        done = True
        try:
            done = self._step(job)
        except Exception:  # a bug here must not stop the thread: the calls fill tables themselves
            log.exception("filling the table of shape %d", job.key)
        finally:
            with self._cv:
                self._busy = False
                if done:
                    if job.again:
                        job.names, job.at, job.again = None, 0, False
                    else:
                        del self._jobs[table]
                self._cv.notify_all()
        return True
