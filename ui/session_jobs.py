"""Which job belongs to which browser session, so Interrupt and Skip reach only your own job."""
from __future__ import annotations

import threading

from backend.generation.job import JobControl


class SessionJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobControl] = {}

    def start(self, session: str, preview_every: int) -> JobControl:
        job = JobControl(preview_every_n_steps=preview_every, owner=f"session:{session}")
        with self._lock:
            self._jobs[session] = job
        return job

    def get(self, session: str) -> JobControl | None:
        with self._lock:
            return self._jobs.get(session)

    def finish(self, session: str, job: JobControl) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]
