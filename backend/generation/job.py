"""Progress, live preview, interrupt and skip for one running job.

A `JobControl` belongs to one job. The runner writes into it from the
`callback_on_step_end` of the pipeline; the UI or the API reads it from another
thread. Interrupt ends the whole job; skip ends only the current image batch.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from PIL import Image


@dataclass
class ProgressSnapshot:
    job_no: int  # batch index, 0-based
    job_count: int
    step: int  # steps done in the current sampling pass
    total_steps: int  # steps of the current sampling pass
    progress: float  # 0..1 over the whole job (all batches, hires passes included)
    eta_seconds: float | None
    its_per_second: float | None
    text: str
    preview: Image.Image | None
    preview_id: int
    running: bool
    queue_position: int | None = None  # jobs that will run before this one; None once it runs


@dataclass
class JobControl:
    """Shared between the worker thread running a job and readers polling it."""

    preview_every_n_steps: int = 0  # 0 disables live preview
    owner: str = "local"  # whose job: a browser session or an API user; the queue serves owners in turn
    created: datetime = field(default_factory=datetime.now)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _interrupted: bool = False
    _skipped: bool = False
    job_no: int = 0
    job_count: int = 1
    step: int = 0
    total_steps: int = 0
    passes_done_steps: int = 0  # steps of finished passes, summed over the whole job
    total_job_steps: int = 0  # all sampling steps of all passes of all batches
    text: str = ""
    preview: Image.Image | None = None
    preview_id: int = 0
    started_at: float | None = None
    finished: bool = False
    queue_position: int | None = None  # written by the DeviceQueue while the job waits
    # A script's job runs several jobs (X/Y/Z: one per cell): which part runs, of how many (0 parts: none).
    part_no: int = 0
    part_count: int = 0

    # --- commands from the UI / API ---
    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True

    def skip(self) -> None:
        with self._lock:
            self._skipped = True

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    def take_skip(self) -> bool:
        """True once per skip request; the runner calls it after a batch ends early."""
        with self._lock:
            skipped, self._skipped = self._skipped, False
            return skipped

    @property
    def should_stop_sampling(self) -> bool:
        return self._interrupted or self._skipped

    # --- updates from the runner ---
    def begin(self, job_count: int, total_job_steps: int) -> None:
        with self._lock:
            self.job_count = job_count
            self.total_job_steps = max(total_job_steps, 1)
            self.started_at = time.monotonic()
            self.finished = False

    def begin_part(self, part_no: int, part_count: int, text: str = "") -> None:
        """A script's part `part_no` (0-based) of `part_count` starts; progress counts whole parts."""
        with self._lock:
            self.part_no, self.part_count = part_no, max(part_count, 1)
            self.text = text

    def begin_pass(self, job_no: int, total_steps: int, text: str = "") -> None:
        with self._lock:
            self.job_no = job_no
            self.step = 0
            self.total_steps = total_steps
            self.text = text

    def advance(self, step: int) -> None:
        with self._lock:
            self.step = step

    def end_pass(self) -> None:
        with self._lock:
            self.passes_done_steps += self.total_steps
            self.step = 0

    def set_text(self, text: str) -> None:
        """What the job is doing now, beside the step count (e.g. compiling the UNet)."""
        with self._lock:
            self.text = text

    def set_preview(self, image: Image.Image) -> None:
        with self._lock:
            self.preview = image
            self.preview_id += 1

    def finish(self) -> None:
        with self._lock:
            self.finished = True

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            done = self.passes_done_steps + self.step
            progress = min(done / self.total_job_steps, 1.0) if self.total_job_steps else 0.0
            job_no, job_count = self.job_no, self.job_count
            if self.part_count:  # a script's parts: the bar moves over all of them
                progress = min((self.part_no + progress) / self.part_count, 1.0)
                job_no, job_count = self.part_no, self.part_count
            elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
            its = done / elapsed if done and elapsed > 0 else None
            eta = (self.total_job_steps - done) / its if its else None
            return ProgressSnapshot(
                job_no=job_no,
                job_count=job_count,
                step=self.step,
                total_steps=self.total_steps,
                progress=1.0 if self.finished else progress,
                eta_seconds=0.0 if self.finished else eta,
                its_per_second=its,
                text=self.text,
                preview=self.preview,
                preview_id=self.preview_id,
                running=self.started_at is not None and not self.finished,
                queue_position=None if self.finished else self.queue_position,
            )
