"""Stopping, restarting and killing the running studio from a request (A1111's /server-stop, -restart, -kill).

The server (ui/server.py) builds one ServerControl when it starts and puts it on the app context; without
one (a router built alone, as in tests) those routes answer that they are not available. The Extensions
page's "Apply and restart" uses restart() too.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


class ServerControl:
    def __init__(self, shut_down: Callable[[], None], argv: Sequence[str] | None = None,
                 executable: str | None = None, kill_delay: float = 0.5) -> None:
        """`shut_down` ends the running job and stops the server as Ctrl+C does, without waiting for it."""
        self._shut_down = shut_down
        self._argv = list(sys.argv if argv is None else argv)
        self._executable = executable or sys.executable
        self._kill_delay = kill_delay
        self._restart = threading.Event()

    def stop(self) -> None:
        """Interrupt the running job, drop the waiting ones and shut the server down cleanly (exit code 0)."""
        log.info("stopping the studio, as asked through the API")
        self._shut_down()

    def restart(self) -> None:
        """Stop as stop() does; once the server is down, the process runs again with the same command line."""
        log.info("restarting the studio, as asked")
        self._restart.set()
        self._shut_down()

    def kill(self) -> None:
        """End the process at once, without shutting anything down (A1111's /server-kill).

        On a timer, so the answer to the request that asked still goes out."""
        log.warning("killing the studio, as asked through the API")
        timer = threading.Timer(self._kill_delay, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    @property
    def restart_requested(self) -> bool:
        return self._restart.is_set()

    def exec_if_restarting(self) -> None:
        """Called once the server has shut down: replace this process with a fresh one when restart() was
        asked (same interpreter, same arguments, same process id); returns otherwise."""
        if not self._restart.is_set():
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # execv drops whatever is still buffered
        os.execv(self._executable, [self._executable, *self._argv])
