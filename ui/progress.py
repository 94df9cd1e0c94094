"""Render a job's progress as the small HTML bar under the gallery."""
from __future__ import annotations

import html

from backend.generation.job import ProgressSnapshot


def progress_html(snap: ProgressSnapshot) -> str:
    if snap.queue_position:  # waiting for others' jobs
        label = html.escape(f"In queue: {snap.queue_position} job(s) ahead")
        return f'<div class="studio-progress"><span class="studio-progress-text">{label}</span></div>'
    percent = int(snap.progress * 100)
    parts = [f"{percent}%"]
    if snap.total_steps:
        parts.append(f"step {snap.step}/{snap.total_steps}")
    if snap.job_count > 1:
        parts.append(f"batch {snap.job_no + 1}/{snap.job_count}")
    if snap.its_per_second:
        parts.append(f"{snap.its_per_second:.2f} it/s")
    if snap.eta_seconds is not None:
        parts.append(f"ETA {snap.eta_seconds:.0f}s")
    label = html.escape(" · ".join(parts))
    return (f'<div class="studio-progress"><div class="studio-progress-bar" style="width:{percent}%"></div>'
            f'<span class="studio-progress-text">{label}</span></div>')
