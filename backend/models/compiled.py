"""The opt-in compiled UNet (`--compile`): torch.compile, once per shape, with an eager fallback.

torch.compile traces the UNet on its first call at a shape and hands the graph to a backend
(inductor: C++/Triton kernels). Later calls at the same shape reuse it; LoRA patches change
weights in place, and prompts, seeds and timesteps are tensor values, so none of them recompile.
A new picture size, batch size or prompt length, or ControlNet residuals, is a new shape and
compiles once more. The backend call is wrapped here so the studio can count compilations, time
them, tell the job's progress text, and run eagerly (with a message) when compiling fails, for
example on a machine without a C++ compiler.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class CompileRecord:
    seconds: float
    inputs: str  # the example inputs' shapes, for the console
    failed: str = ""  # why compiling failed; the graph then runs eagerly


@dataclass
class UnetCompiler:
    """Compiles UNets with one torch.compile backend and keeps count of what it compiled."""

    backend: str = "inductor"
    records: list[CompileRecord] = field(default_factory=list)
    _status: Callable[[str], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def compilations(self) -> int:
        return len(self.records)

    @property
    def failures(self) -> list[str]:
        return [r.failed for r in self.records if r.failed]

    def compile(self, unet: torch.nn.Module) -> None:
        """Compile `unet` in place (nn.Module.compile: the same object, so every pipeline sharing it
        gets the compiled call). Shapes stay static: one fast graph per size, cached by torch."""
        unet.compile(backend=self._compile_graph, dynamic=False)

    @contextlib.contextmanager
    def reporting(self, status: Callable[[str], None]) -> Iterator[None]:
        """While a job runs, tell it (its progress text) when a compilation starts and how long it took."""
        with self._lock:
            self._status = status
        try:
            yield
        finally:
            with self._lock:
                self._status = None

    def _tell(self, text: str) -> None:
        log.info("%s", text)
        status = self._status
        if status is not None:
            status(text)

    def _compile_graph(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        """A torch.compile backend: the configured one, timed; the graph's own forward when it fails."""
        shapes = ", ".join(str(tuple(x.shape)) for x in example_inputs if isinstance(x, torch.Tensor) and x.ndim >= 3)
        self._tell(f"Compiling the UNet ({self.backend}) for inputs {shapes or 'of a new shape'}: once per shape")
        start = time.perf_counter()
        try:
            compiled = torch._dynamo.lookup_backend(self.backend)(graph, example_inputs)
            failed = ""
        except Exception as exc:  # a compiler error must not fail the job: the graph runs as written
            compiled, failed = graph.forward, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        seconds = time.perf_counter() - start
        with self._lock:
            self.records.append(CompileRecord(seconds=seconds, inputs=shapes, failed=failed))
        if failed:
            log.warning("compiling the UNet failed (%s); it runs eagerly instead", failed)
            self._tell(f"Compiling the UNet failed after {seconds:.1f} s; running it eagerly ({failed})")
        else:
            self._tell(f"Compiled the UNet in {seconds:.1f} s")
        return compiled
