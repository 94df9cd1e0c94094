"""Live mode on txt2img: the picture regenerates as the prompt or a setting changes.

Each change is a trigger for the same `run` the Generate button uses, through the same device queue.
Triggers of one browser session supersede each other: a change interrupts the session's live job in
flight (it stops at its next step), and a trigger waits a short pause first, so a burst of typing
becomes one job. A superseded frame shows nothing, so the gallery ends on the newest picture.
The page numbers its triggers: their requests can reach the server out of order, and a late one
must not pass for the newest with its older values.

Live frames are drafts and are not saved to outputs/ (as A1111 saves only what you Generate): press
Generate to keep one.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gradio as gr

from backend.generation.job import JobControl

DEBOUNCE_SECONDS = 0.4  # quiet time after the last change before a frame is queued
# Runs in the page before each trigger is sent: its first input becomes the page's running trigger number.
PAGE_ORDER_JS = "(...values) => [window.studioLiveOrder = (window.studioLiveOrder || 0) + 1, ...values.slice(1)]"


class LiveSessions:
    """Per browser session: the number of its newest live trigger, and the live job running for it."""

    def __init__(self, debounce_seconds: float = DEBOUNCE_SECONDS, sleep: Callable[[float], None] = time.sleep):
        self.debounce_seconds = debounce_seconds
        self._sleep = sleep
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)  # never reused, so a late old ticket cannot pass for a new one
        # Two ints per session that ever changed a watched field: kept, so a late stale trigger stays stale.
        self._newest: dict[str, int] = {}
        self._page_order: dict[str, int] = {}  # the highest trigger number each page has sent
        self._running: dict[str, JobControl] = {}

    def change(self, session: str, page_order: int | None = None) -> LiveTicket:
        """A new trigger: it supersedes the older ones, and the job in flight is of no use any more.
        One the page sent before a trigger already here (`page_order`) is stale on arrival."""
        with self._lock:
            if page_order is not None:
                if page_order <= self._page_order.get(session, -1):
                    return LiveTicket(self, session, 0)  # number 0 is never the newest
                self._page_order[session] = page_order
            number = self._newest[session] = next(self._numbers)
            if job := self._running.get(session):
                job.interrupt()
        return LiveTicket(self, session, number)

    def cancel(self, session: str, page_order: int | None = None) -> None:
        """Live turned off: no trigger of the session is the newest any more, and its job stops."""
        self.change(session, page_order)

    def is_newest(self, session: str, number: int) -> bool:
        with self._lock:
            return self._newest.get(session) == number

    def running(self, session: str) -> JobControl | None:
        with self._lock:
            return self._running.get(session)

    def _begin(self, session: str, number: int, job: JobControl) -> None:
        with self._lock:
            if self._newest.get(session) != number:  # superseded between its pause and its start
                job.interrupt()
                return
            self._running[session] = job

    def _end(self, session: str, number: int, job: JobControl) -> bool:
        """Whether the job's trigger is still the newest, so its picture is the one to show."""
        with self._lock:
            if self._running.get(session) is job:
                del self._running[session]
            return self._newest.get(session) == number


@dataclass(frozen=True)
class LiveTicket:
    """One live trigger; `ui.widgets.stream_job` calls `begin` and `end` around its job."""

    sessions: LiveSessions
    session: str
    number: int

    @property
    def newest(self) -> bool:
        return self.sessions.is_newest(self.session, self.number)

    def settle(self) -> bool:
        """The debounce: wait the pause, then say whether this trigger is still the newest."""
        if not self.newest:  # stale on arrival: no need to wait
            return False
        self.sessions._sleep(self.sessions.debounce_seconds)
        return self.newest

    def begin(self, job: JobControl) -> None:
        self.sessions._begin(self.session, self.number, job)

    def end(self, job: JobControl) -> bool:
        return self.sessions._end(self.session, self.number, job)


def live_frames(sessions: LiveSessions, session: str, page_order: int | None, run: Callable[..., Iterator],
                n_outputs: int, *run_args) -> Iterator:
    """What one live trigger yields: nothing when a newer one comes within the pause, else `run`'s frames."""
    ticket = sessions.change(session, page_order)
    if not ticket.settle():
        # One all-skip frame: a generator that yields nothing would clear the outputs.
        yield (gr.skip(),) * n_outputs
        return
    yield from run(*run_args, live=ticket)


def build_live_toggle(tab: str) -> gr.Checkbox:
    return gr.Checkbox(label="Live", value=False, elem_id=f"{tab}_live",
                       info="regenerate as you edit (few-step models; live pictures are not saved)")


def wire_live(toggle: gr.Checkbox, run: Callable[..., Iterator], watched: Sequence[gr.components.Component],
              inputs: list, outputs: list) -> LiveSessions:
    """Turning the toggle on or changing a watched component while it is on calls `run(request, *inputs,
    live=ticket)`; turning it off stops the session's live job."""
    sessions = LiveSessions()
    page_order = gr.Number(value=0, precision=0, visible=False)  # filled by PAGE_ORDER_JS for each trigger

    # `request` first: Gradio fills a gr.Request only among the leading positional parameters.
    def on_change(request: gr.Request, order, live_on, *values):
        order = int(order) if order else None
        if not live_on:
            sessions.cancel(request.session_hash, order)
            yield (gr.skip(),) * len(outputs)
            return
        yield from live_frames(sessions, request.session_hash, order, run, len(outputs), request, *values)

    # "multiple": every change reaches the server, which drops the superseded ones itself; the default
    # "always_last" would hold a change back until the frame in flight finished instead of interrupting it.
    gr.on([toggle.change, *(c.change for c in watched)], on_change, inputs=[page_order, toggle, *inputs],
          outputs=outputs, js=PAGE_ORDER_JS, trigger_mode="multiple", concurrency_limit=None, show_progress="hidden",
          api_visibility="private")  # the page's own; scripts use Generate's endpoint or /sdapi/v1
    return sessions
