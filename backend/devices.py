"""Where models run and in what precision, from A1111's flag names."""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Literal

import torch

Offload = Literal["none", "model", "sequential"]
PRECISIONS: tuple[str, ...] = ("auto", "full", "half", "bf16", "autocast")

# /proc/cpuinfo flags of CPUs that compute in bf16 natively (AVX512-BF16 dot products, AMX tiles).
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively, from its feature flags (Linux's /proc/cpuinfo).

    Without native support torch emulates bf16 and it is slower than fp32, so nothing is guessed: an
    unreadable cpuinfo (macOS, Windows) means no."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return bool(_NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    dtype: torch.dtype  # the UNet's, and what ControlNets, adapters and the conditioning follow
    offload: Offload = "none"  # --medvram: model CPU offload; --lowvram: sequential offload
    text_encoder_dtype: torch.dtype | None = None  # None: as the UNet
    vae_dtype: torch.dtype | None = None  # None: as the UNet
    reason: str = ""  # why this precision (shown at start and in Settings)
    compile: str | None = None  # --compile: the torch.compile backend for the UNet (inductor); None runs it eagerly

    @property
    def text_encoder(self) -> torch.dtype:
        return self.text_encoder_dtype or self.dtype

    @property
    def vae(self) -> torch.dtype:
        return self.vae_dtype or self.dtype

    @property
    def channels_last(self) -> bool:
        """The UNet in channels-last layout: on a CPU in bf16 a whole job measured 1.3x faster (oneDNN's bf16
        kernels); in fp32 it measured no gain (tests/bench_precision.py)."""
        return self.device.type == "cpu" and self.dtype == torch.bfloat16

    @property
    def vae_channels_last(self) -> bool:
        """The VAE (and the TAESD / Approx NN decoders) channels-last: on a CPU in bf16 a 256 px decode of the
        full-size VAE took 0.45 s against 2.74 s in fp32 (contiguous bf16 gains far less)."""
        return self.device.type == "cpu" and self.vae == torch.bfloat16

    def describe(self) -> dict[str, str]:
        """What each model part runs in, for the console and Settings."""
        return {"device": str(self.device), "unet": _dtype_name(self.dtype),
                "text encoders": _dtype_name(self.text_encoder), "vae": _dtype_name(self.vae),
                "layout": ("channels-last UNet and VAE" if self.vae_channels_last else "channels-last UNet")
                if self.channels_last else "contiguous",
                "unet compile": f"torch.compile ({self.compile}), once per shape" if self.compile else "off (eager)",
                "why": self.reason}

    @classmethod
    def from_flags(cls, device: str | None = None, no_half: bool = False, lowvram: bool = False,
                   medvram: bool = False, precision: str = "auto", no_half_vae: bool = False,
                   compile: bool | str | None = None, native_bf16=cpu_has_native_bf16) -> "DeviceSettings":
        """A1111's flags: `--precision full` and `--no-half` mean fp32; `autocast` is taken as `auto`.
        `compile`: True (inductor) or a torch.compile backend's name compiles the UNet.
        `native_bf16()` says whether the CPU has bf16 (a probe; tests give their own)."""
        if device:
            dev = torch.device(device)
        elif torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
        if precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        dtype, vae_dtype, reason = _choose(dev, "full" if no_half else precision, native_bf16)
        if no_half_vae:
            vae_dtype, reason = torch.float32, reason + "; VAE in fp32 (--no-half-vae)"
        offload: Offload = "sequential" if lowvram else "model" if medvram else "none"
        if dev.type == "cpu":
            offload = "none"  # offloading to the CPU from the CPU means nothing
        backend = "inductor" if compile is True else (compile or None)
        return cls(device=dev, dtype=dtype, offload=offload, vae_dtype=None if vae_dtype == dtype else vae_dtype,
                   reason=reason, compile=backend)

    @property
    def generator_device(self) -> str:
        # Noise is drawn on the CPU so the same seed gives the same image on every device, like A1111's default.
        return "cpu"


def _choose(dev: torch.device, precision: str, native_bf16) -> tuple[torch.dtype, torch.dtype, str]:
    """(UNet dtype, VAE dtype, why) for a device and a --precision value."""
    if precision == "full":
        return torch.float32, torch.float32, "fp32 (--precision full / --no-half)"
    if dev.type == "cpu":
        if precision == "auto" or precision == "autocast":
            if native_bf16():
                # The VAE too: bf16 has fp32's range (no fp16-style overflow), decodes 6x faster here, and
                # its pictures differ from fp32's by under 1/255 on average (README, Benchmark).
                return torch.bfloat16, torch.bfloat16, "bf16: this CPU computes bf16 natively (avx512_bf16 / amx)"
            return torch.float32, torch.float32, "fp32: this CPU has no native bf16"
        # half or bf16: fp16 on a CPU is emulated and slow, so its half type is bf16, asked for by name. The
        # VAE follows only where bf16 is native (emulated, it is slower than fp32).
        return torch.bfloat16, torch.bfloat16 if native_bf16() else torch.float32, f"bf16 (--precision {precision})"
    if precision == "bf16":
        return torch.bfloat16, torch.bfloat16, "bf16 (--precision bf16)"
    # fp16 on accelerators as A1111 does (the SDXL VAE is upcast when it asks: force_upcast).
    return torch.float16, torch.float16, "fp16 on the accelerator"


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
