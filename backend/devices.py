"""Where models run and in what precision, from A1111's flag names."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Literal

import torch

Offload = Literal["none", "model", "sequential"]


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    dtype: torch.dtype
    offload: Offload = "none"  # --medvram: model CPU offload; --lowvram: sequential offload

    @classmethod
    def from_flags(cls, device: str | None = None, no_half: bool = False, lowvram: bool = False,
                   medvram: bool = False) -> "DeviceSettings":
        if device:
            dev = torch.device(device)
        elif torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
        # fp16 on accelerators as A1111 does; fp32 on the CPU, where half precision is slow or missing.
        dtype = torch.float32 if dev.type == "cpu" or no_half else torch.float16
        offload: Offload = "sequential" if lowvram else "model" if medvram else "none"
        if dev.type == "cpu":
            offload = "none"  # offloading to the CPU from the CPU means nothing
        return cls(device=dev, dtype=dtype, offload=offload)

    @property
    def generator_device(self) -> str:
        # Noise is drawn on the CPU so the same seed gives the same image on every device, like A1111's default.
        return "cpu"


def memory_report() -> dict:
    """A1111's /memory shape: system RAM, and the CUDA device's memory when there is one."""
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    report: dict = {"ram": {"free": free, "used": total - free, "total": total}}
    if torch.cuda.is_available():
        free_gpu, total_gpu = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        report["cuda"] = {
            "system": {"free": free_gpu, "used": total_gpu - free_gpu, "total": total_gpu},
            "active": {"current": stats.get("active_bytes.all.current", 0), "peak": stats.get("active_bytes.all.peak", 0)},
            "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                          "peak": stats.get("allocated_bytes.all.peak", 0)},
            "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                         "peak": stats.get("reserved_bytes.all.peak", 0)},
        }
    else:
        report["cuda"] = {"error": "no CUDA device"}
    return report


# What the CPU and Apple allocators say when they refuse: a plain RuntimeError, not torch.OutOfMemoryError.
_OUT_OF_MEMORY_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "MPS backend out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether the device's allocator refused memory, on CUDA, the CPU or MPS."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in _OUT_OF_MEMORY_MESSAGES))


def release_cached_memory() -> None:
    """Give the allocator's cached blocks back, e.g. after a job ran out of memory, so the next job can start."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
