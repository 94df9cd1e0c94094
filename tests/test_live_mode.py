"""Live mode (ui/live.py) with the real service and tiny checkpoints: a newer trigger of a session interrupts
its frame in flight at the next step and only the newest frame shows a picture; sessions do not cancel each
other; a burst of triggers becomes one job."""
from __future__ import annotations

import threading
import time
from collections import defaultdict

import gradio as gr
import pytest

from backend.extensions.api import ExtensionApi
from backend.generation.job import JobControl
from backend.generation.request import Txt2ImgRequest
from ui.live import LiveSessions, live_frames
from ui.session_jobs import SessionJobs
from ui.widgets import stream_job

JOB = dict(width=64, height=64, seed=5, sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)


def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Steps:
    """An extension step hook: the steps each prompt's job took; one prompt can be held at a step."""

    def __init__(self, ctx):
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.hold: tuple[str, int] | None = None
        self.held, self.go = threading.Event(), threading.Event()
        ExtensionApi("test_live", ctx.service.hooks).on_step(self._step)

    def _step(self, info) -> None:
        self.seen[info.request.prompt].append(info.step)
        if (info.request.prompt, info.step) == self.hold:
            self.held.set()
            assert self.go.wait(60)


@pytest.fixture
def steps(app_context):
    return Steps(app_context)


def frame_job(ctx, jobs, session, prompt, n_steps, ticket):
    """One live frame's outputs, as stream_job yields them to the page."""
    request = Txt2ImgRequest(prompt=prompt, steps=n_steps, **JOB)
    return list(stream_job(ctx, jobs, session, "txt2img", lambda job: ctx.service.txt2img(request, job),
                           live=ticket))


def shown(frames) -> list:
    """The gallery values a frame stream set (gr.skip() is a dict, a gallery value a list)."""
    return [f[0] for f in frames if isinstance(f[0], list)]


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True)
    thread.start()
    return thread, box


def test_a_newer_trigger_interrupts_the_frame_in_flight_at_its_next_step_and_only_the_newest_shows(
        app_context, steps):
    ctx, jobs, live = app_context, SessionJobs(), LiveSessions(debounce_seconds=0)
    steps.hold = ("a red ball", 1)
    first, first_frames = in_thread(frame_job, ctx, jobs, "s1", "a red ball", 8, live.change("s1"))
    assert steps.held.wait(60)
    job_a = jobs.get("s1")
    newer = live.change("s1")  # the user typed on
    assert job_a.interrupted and live.running("s1") is job_a
    steps.go.set()
    second = frame_job(ctx, jobs, "s1", "a blue ball", 2, newer)
    first.join(60)
    assert steps.seen["a red ball"] == [1]  # stopped at the step it was on: no step 2 of 8
    assert steps.seen["a blue ball"] == [1, 2]
    assert shown(first_frames[0]) == []  # the superseded frame never touched the gallery
    (gallery,) = shown(second)
    assert len(gallery) == 1 and gallery[0][1].startswith("a blue ball")
    assert "a blue ball" in second[-1][3] and "Interrupted" not in second[-1][3]
    assert live.running("s1") is None and jobs.get("s1") is None


def test_live_frames_of_different_sessions_do_not_cancel_each_other(app_context, steps):
    ctx, jobs, live = app_context, SessionJobs(), LiveSessions(debounce_seconds=0)
    steps.hold = ("alice's cat", 1)
    alice, alice_frames = in_thread(frame_job, ctx, jobs, "alice", "alice's cat", 3, live.change("alice"))
    assert steps.held.wait(60)
    bob_ticket = live.change("bob")
    assert not jobs.get("alice").interrupted
    steps.go.set()
    bob = frame_job(ctx, jobs, "bob", "bob's dog", 2, bob_ticket)
    alice.join(60)
    assert steps.seen["alice's cat"] == [1, 2, 3] and steps.seen["bob's dog"] == [1, 2]
    assert len(shown(alice_frames[0])) == 1 and len(shown(bob)) == 1


def test_a_burst_of_triggers_becomes_one_job(app_context, steps):
    ctx, jobs = app_context, SessionJobs()
    pausing, release = [], threading.Event()

    def pause(seconds):  # the debounce's sleep, held until the whole burst has come in
        pausing.append(seconds)
        assert release.wait(60)

    live = LiveSessions(sleep=pause)

    def run(prompt, live=None):  # what txt2img's `run` does with a live ticket
        request = Txt2ImgRequest(prompt=prompt, steps=2, **JOB)
        yield from stream_job(ctx, jobs, "s1", "txt2img", lambda job: ctx.service.txt2img(request, job), live=live)

    burst = []
    for n in range(5):  # five keystrokes
        burst.append(in_thread(lambda p, n: list(live_frames(live, "s1", n, run, 6, p)), f"a cat {n}", n + 1))
        until(lambda: len(pausing) == n + 1)
    release.set()
    for thread, _ in burst:
        thread.join(60)
    assert dict(steps.seen) == {"a cat 4": [1, 2]}
    frames = [box[0] for _, box in burst]
    assert all(f == [(gr.skip(),) * 6] for f in frames[:4])  # one all-skip frame each, no job
    assert shown(frames[4])[0][0][1].startswith("a cat 4")


def test_turning_live_off_stops_the_frame_and_a_late_start_stops_at_once():
    live = LiveSessions(debounce_seconds=0)
    ticket, job = live.change("s1"), JobControl()
    ticket.begin(job)
    live.cancel("s1")  # the toggle went off
    assert job.interrupted and not ticket.end(job) and live.running("s1") is None
    stale = live.change("s1")
    assert stale.settle()
    live.change("s1")  # came in between the pause and the start
    late = JobControl()
    stale.begin(late)
    assert late.interrupted and live.running("s1") is None and not stale.end(late)


def test_a_trigger_the_page_sent_before_one_already_here_is_stale_on_arrival():
    live = LiveSessions(debounce_seconds=0)
    newer = live.change("s1", page_order=7)
    job = JobControl()
    newer.begin(job)
    late = live.change("s1", page_order=6)  # its request overtook by the newer one on the way
    assert not late.settle() and newer.newest and not job.interrupted
    assert live.change("s2", page_order=1).newest  # each page counts its own triggers
    assert newer.end(job)
