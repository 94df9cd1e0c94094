"""The API's jobs by task id, so progress, interrupt and skip reach the caller's own job.

A1111 has one global job state; here every API caller (its auth user, or its
address when there is no auth) is an owner of its own jobs, as every browser
session is. `/progress` shows the caller's job, `/interrupt` and `/skip` act on
it, and nobody else's.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

from backend.generation.job import JobControl


@dataclass(eq=False)
class ApiTask:
    task_id: str
    job: JobControl


class ApiJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: list[ApiTask] = []  # unfinished ones; two clients may force the same task id

    def start(self, owner: str, task_id: str | None = None) -> ApiTask:
        """A new task (A1111's `force_task_id` names it); the service sets its live-preview rate."""
        task = ApiTask(task_id or f"task({uuid.uuid4().hex[:15]})", JobControl(owner=owner))
        with self._lock:
            self._tasks.append(task)
        return task

    def finish(self, task: ApiTask) -> None:
        with self._lock:
            self._tasks.remove(task)

    def active(self, owner: str) -> list[ApiTask]:
        """The owner's unfinished tasks: the running one first, then the queued ones in order."""
        with self._lock:
            tasks = [t for t in self._tasks if t.job.owner == owner]
        return sorted(tasks, key=lambda t: -1 if t.job.queue_position is None else t.job.queue_position)
