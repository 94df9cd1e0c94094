"""One job on the device at a time, and a fair line for the jobs that wait.

Every job waits for its turn here before it touches the device. Jobs are taken
in turn per owner (a browser session, or an API user): the owner served least
recently goes next, and one owner's jobs run in the order they came. So a
client that sends twenty jobs at once does not hold up someone else's one.

Each waiting job's `JobControl.queue_position` says how many jobs will run
before it; a job interrupted while it waits leaves the line without running.

The work itself runs on one long-lived device thread, whoever asked for it.
Every thread that runs torch ops on the CPU keeps its own OpenMP team; with
two teams on the same cores, OpenMP stops spinning and every small op waits
for a wake-up: the demo model took 1.45 s a picture instead of 0.81 s.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from backend.generation.job import JobControl

_WAKE_SECONDS = 0.2  # how often a waiting job looks at its own interrupt flag
_REMEMBERED_OWNERS = 1000  # owners whose last turn is kept, for the fair order

T = TypeVar("T")


class InterruptedWhileQueued(Exception):
    """The job was interrupted before its turn came; it never ran."""


@dataclass(eq=False)
class _Ticket:
    owner: str
    job: JobControl
    arrival: int


class DeviceQueue:
    """The line in front of the device (`device_lock` is the model manager's)."""

    def __init__(self, device_lock: threading.RLock):
        self._device_lock = device_lock
        self._device_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device",
                                                 initializer=self._remember_device_thread)
        self._device_thread_id: int | None = None
        self._changed = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._running: _Ticket | None = None
        self._last_turn: dict[str, int] = {}  # owner -> the turn number it last had
        self._turns = itertools.count(1)
        self._arrivals = itertools.count()

    def run(self, job: JobControl, work: Callable[[], T]) -> T:
        """Wait in line, then run `work` on the device thread; its result or its exception comes back."""
        with self._turn(job):
            return self._device_thread.submit(self.on_device_now, work).result()

    def on_device_now(self, work: Callable[[], T]) -> T:
        """Run `work` under the device lock, ahead of the line: a model load, an unload."""
        if threading.get_ident() == self._device_thread_id:
            with self._device_lock:
                return work()
        return self._device_thread.submit(self.on_device_now, work).result()

    def _remember_device_thread(self) -> None:
        self._device_thread_id = threading.get_ident()

    @contextmanager
    def _turn(self, job: JobControl) -> Iterator[None]:
        owner = job.owner
        ticket = _Ticket(owner, job, next(self._arrivals))
        with self._changed:
            self._waiting.append(ticket)
            self._publish_positions()
            while self._running is not None or self._order()[0] is not ticket:
                if job.interrupted:
                    self._waiting.remove(ticket)
                    job.queue_position = None
                    self._publish_positions()
                    self._changed.notify_all()
                    raise InterruptedWhileQueued(f"interrupted while waiting in the queue ({owner})")
                self._changed.wait(_WAKE_SECONDS)
            self._waiting.remove(ticket)
            self._running = ticket
            self._remember_turn(owner)
            job.queue_position = None
            self._publish_positions()
        try:
            yield
        finally:
            with self._changed:
                self._running = None
                self._changed.notify_all()

    def close(self) -> None:
        """At shutdown: interrupt the running job and drop the waiting ones, so the process can exit
        (the device thread is joined at exit, and a long job would hold it up)."""
        with self._changed:
            for ticket in [self._running, *self._waiting]:
                if ticket is not None:
                    ticket.job.interrupt()
        self._device_thread.shutdown(wait=False, cancel_futures=True)

    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def busy(self) -> bool:
        with self._changed:
            return self._running is not None

    # --- the fair order ---
    def _order(self) -> list[_Ticket]:
        """The waiting tickets in the order they will run, by playing the rule forward."""
        last_turn = dict(self._last_turn)
        waiting = list(self._waiting)
        order = []
        turn = max(last_turn.values(), default=0)
        while waiting:
            # Never served counts as served longest ago; among equals the earliest arrival goes first.
            chosen = min(waiting, key=lambda t: (last_turn.get(t.owner, 0), t.arrival))
            waiting.remove(chosen)
            order.append(chosen)
            turn += 1
            last_turn[chosen.owner] = turn
        return order

    def _publish_positions(self) -> None:
        ahead = 1 if self._running is not None else 0
        for position, ticket in enumerate(self._order()):
            ticket.job.queue_position = position + ahead

    def _remember_turn(self, owner: str) -> None:
        self._last_turn[owner] = next(self._turns)
        if len(self._last_turn) > _REMEMBERED_OWNERS:  # forget the owners served longest ago
            for stale in sorted(self._last_turn, key=self._last_turn.get)[:len(self._last_turn) // 2]:
                del self._last_turn[stale]
