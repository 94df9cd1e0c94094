"""Stopping the studio: Ctrl+C in the console ends the running job, answers its request with what was
made so far, and exits cleanly, without waiting for the job to finish."""
from __future__ import annotations

import shutil
import signal
import threading
import time

import httpx

from tests.fixtures.launched import launched_process


def test_ctrl_c_interrupts_the_running_job_and_exits_cleanly(tmp_path, checkpoint_dir):
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(checkpoint_dir / "sd1.safetensors", models / "tiny-sd1.safetensors")
    long_job = {"prompt": "a long job", "steps": 150, "n_iter": 40, "width": 64, "height": 64, "seed": 1}
    answers: dict[str, httpx.Response] = {}
    for url, process in launched_process(tmp_path, models):
        with httpx.Client(base_url=url, timeout=300) as caller, httpx.Client(base_url=url, timeout=30) as watcher:
            job = threading.Thread(target=lambda: answers.update(txt2img=caller.post("/sdapi/v1/txt2img",
                                                                                      json=long_job)))
            job.start()
            deadline = time.monotonic() + 120
            while watcher.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            exit_code = process.wait(timeout=120)  # a hang fails here instead of waiting for 6000 steps
            job.join(timeout=30)
        assert exit_code == 0, (tmp_path / "launch.log").read_text()[-3000:]
        answer = answers["txt2img"]
        assert answer.status_code == 200
        assert len(answer.json()["images"]) < long_job["n_iter"]  # stopped, not run to the end
        assert "Traceback" not in (tmp_path / "launch.log").read_text()
