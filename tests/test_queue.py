"""The device queue: one job at a time, owners served in turn, positions, interrupt while waiting, failures."""
from __future__ import annotations

import threading
import time

from backend.generation.job import JobControl
from backend.generation.queue import DeviceQueue, InterruptedWhileQueued
from ui.progress import progress_html


class Line:
    """Jobs in threads; each holds the device until the test lets it go."""

    def __init__(self):
        self.device_lock = threading.RLock()
        self.queue = DeviceQueue(self.device_lock)
        self.ran: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.release: dict[str, threading.Event] = {}
        self.jobs: dict[str, JobControl] = {}
        self.threads: list[threading.Thread] = []
        self.threads_used: set[int] = set()  # threads the work ran on

    def submit(self, name: str, owner: str, fail: bool = False) -> JobControl:
        job = JobControl(owner=owner)
        self.jobs[name], self.release[name] = job, threading.Event()
        waiting_before = self.queue.waiting() + (1 if self.queue.busy() else 0)

        def work():
            assert self.device_lock._is_owned()
            self.ran.append(name)
            self.threads_used.add(threading.get_ident())
            assert self.release[name].wait(10)
            if fail:
                raise RuntimeError("out of memory")
            return name

        def body():
            try:
                self.outcomes[name] = "done" if self.queue.run(job, work) == name else "wrong result"
            except InterruptedWhileQueued:
                self.outcomes[name] = "interrupted while queued"
            except RuntimeError as err:
                self.outcomes[name] = f"failed: {err}"

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)
        # Wait until it stands in line (or runs), so arrival order is the order of submit calls.
        until(lambda: self.queue.waiting() + (1 if self.queue.busy() else 0) > waiting_before)
        return job

    def finish(self, name: str) -> None:
        self.release[name].set()
        until(lambda: name in self.outcomes)


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_owners_are_served_in_turn_and_positions_say_so():
    line = Line()
    line.submit("a1", "alice")
    until(lambda: line.ran == ["a1"])
    line.submit("a2", "alice")
    line.submit("a3", "alice")
    line.submit("b1", "bob")  # came last, but bob has not had a turn yet
    positions = {name: line.jobs[name].queue_position for name in ("a2", "a3", "b1")}
    assert positions == {"b1": 1, "a2": 2, "a3": 3}, positions
    for name in ("a1", "b1", "a2", "a3"):
        until(lambda: line.ran[-1:] == [name])
        assert line.jobs[name].queue_position is None  # running
        line.finish(name)
    assert line.ran == ["a1", "b1", "a2", "a3"]
    # Four callers' threads, one device thread: a single OpenMP team on the CPU (see queue.py).
    assert len(line.threads_used) == 1 and threading.get_ident() not in line.threads_used


def test_one_owner_alone_keeps_its_own_order():
    line = Line()
    for name in ("j1", "j2", "j3"):
        line.submit(name, "carol")
    assert [line.jobs[n].queue_position for n in ("j2", "j3")] == [1, 2]
    for name in ("j1", "j2", "j3"):
        until(lambda: line.ran[-1:] == [name])
        line.finish(name)
    assert line.ran == ["j1", "j2", "j3"]


def test_a_job_interrupted_while_waiting_never_runs_and_others_move_up():
    line = Line()
    line.submit("a1", "alice")
    b1 = line.submit("b1", "bob")
    line.submit("c1", "carol")
    assert line.jobs["c1"].queue_position == 2
    b1.interrupt()
    until(lambda: "b1" in line.outcomes)
    assert line.outcomes["b1"] == "interrupted while queued"
    assert line.jobs["c1"].queue_position == 1 and line.queue.waiting() == 1
    line.finish("a1")
    until(lambda: line.ran[-1:] == ["c1"])
    line.finish("c1")
    assert line.ran == ["a1", "c1"]


def test_a_failing_job_fails_alone_and_the_next_one_runs():
    line = Line()
    line.submit("bad", "alice", fail=True)
    line.submit("good", "bob")
    line.finish("bad")
    assert line.outcomes["bad"] == "failed: out of memory"
    until(lambda: line.ran[-1:] == ["good"])
    line.finish("good")
    assert line.outcomes["good"] == "done" and not line.queue.busy()


def test_a_model_load_outside_the_queue_still_waits_for_the_running_job():
    line = Line()
    line.submit("a1", "alice")
    until(lambda: line.ran == ["a1"])  # busy() turns true before the device thread takes the lock
    took_lock = threading.Event()

    def load_checkpoint():
        with line.device_lock:
            took_lock.set()

    threading.Thread(target=load_checkpoint, daemon=True).start()
    assert not took_lock.wait(0.2)
    line.finish("a1")
    assert took_lock.wait(5)


def test_work_ahead_of_the_line_runs_between_jobs_on_the_device_thread():
    line = Line()
    line.submit("a1", "alice")
    until(lambda: line.ran == ["a1"])
    line.submit("b1", "bob")
    done = []
    loader = threading.Thread(target=lambda: done.append(line.queue.on_device_now(
        lambda: (line.device_lock._is_owned(), list(line.ran), threading.get_ident()))), daemon=True)
    loader.start()
    time.sleep(0.1)
    assert not done  # a1 is still on the device
    line.finish("a1")
    loader.join(5)
    owned, ran_before, thread = done[0]
    assert owned and ran_before == ["a1"] and thread in line.threads_used  # after a1, before b1
    until(lambda: line.ran[-1:] == ["b1"])
    line.finish("b1")
    assert line.queue.on_device_now(lambda: 42) == 42


def test_progress_bar_says_how_many_jobs_are_ahead():
    job = JobControl()
    job.queue_position = 3
    assert "In queue: 3 job(s) ahead" in progress_html(job.snapshot())
    job.queue_position = None
    job.begin(1, 10)
    job.begin_pass(0, 10)
    job.advance(5)
    text = progress_html(job.snapshot())
    assert "In queue" not in text and "50%" in text and "step 5/10" in text


def test_a_finished_job_reports_no_queue_position():
    job = JobControl()
    job.queue_position = 2
    job.finish()
    assert job.snapshot().queue_position is None


def test_closing_interrupts_the_running_job_and_drops_the_waiting_ones():
    line = Line()
    running = line.submit("a1", "alice")
    until(lambda: line.ran == ["a1"])
    waiting = line.submit("b1", "bob")
    line.queue.close()
    until(lambda: "b1" in line.outcomes)
    assert running.interrupted and line.outcomes["b1"] == "interrupted while queued"
    line.finish("a1")  # the work itself sees the interrupt at its next step; here it just ends
    assert line.ran == ["a1"] and waiting.interrupted
