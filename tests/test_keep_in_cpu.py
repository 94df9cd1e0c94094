"""A1111's sd_checkpoints_keep_in_cpu: of the cached checkpoints only the current one sits on the
accelerator; the others wait in RAM and move back on a switch, with no disk read. This machine has no
GPU, so the pipelines here record where the manager sends them (the placement logic is the manager's;
the moves themselves are diffusers' `pipe.to`)."""
from __future__ import annotations

import torch

from backend.devices import DeviceSettings
from backend.models.manager import ModelManager
from backend.models.types import LoadedCheckpoint

CUDA = DeviceSettings(device=torch.device("cuda"), dtype=torch.float16)


class _Unet:
    def __init__(self):
        self.device = torch.device("cuda", 0)  # where place() put it, as torch reports it


class RecordingPipe:
    def __init__(self, name: str, moves: list):
        self.name, self.moves, self.unet = name, moves, _Unet()

    def to(self, device):
        device = torch.device(device)
        self.moves.append((self.name, device.type))
        self.unet.device = torch.device(device.type, 0) if device.type == "cuda" else device


class RecordingManager(ModelManager):
    """Reads no file: each 'load from disk' is recorded and gives a RecordingPipe on the device."""

    def __init__(self, *args, **kwargs):
        self.moves: list = []
        self.reads: list[str] = []
        super().__init__(*args, **kwargs)

    def _read(self, info):
        self.reads.append(info.name)
        return LoadedCheckpoint(info=info, variant=info.variant, pipe=RecordingPipe(info.name, self.moves))


def _where(manager) -> dict[str, str]:
    return {c.info.name: c.pipe.unet.device.type for c in manager.loaded()}


def test_only_the_current_checkpoint_is_on_the_gpu(checkpoint_dir):
    manager = RecordingManager([checkpoint_dir], CUDA, cache_size=2)
    manager.load("sd1.safetensors")
    manager.load("sd1-other.safetensors")
    assert _where(manager) == {"sd1.safetensors": "cpu", "sd1-other.safetensors": "cuda"}
    assert manager.moves == [("sd1.safetensors", "cpu")]  # moved out before the new one was read

    manager.load("sd1.safetensors")  # switching back: from RAM, no read
    assert _where(manager) == {"sd1.safetensors": "cuda", "sd1-other.safetensors": "cpu"}
    assert manager.reads == ["sd1.safetensors", "sd1-other.safetensors"]
    moves = len(manager.moves)
    manager.load("sd1.safetensors")  # the current one again: nothing moves
    assert len(manager.moves) == moves


def test_the_setting_off_keeps_every_cached_checkpoint_on_the_gpu(checkpoint_dir):
    manager = RecordingManager([checkpoint_dir], CUDA, cache_size=2, keep_in_cpu=False)
    manager.load("sd1.safetensors")
    manager.load("sd1-other.safetensors")
    assert _where(manager) == {"sd1.safetensors": "cuda", "sd1-other.safetensors": "cuda"} and not manager.moves


def test_nothing_moves_on_the_cpu_or_with_offloading(checkpoint_dir):
    for device in (DeviceSettings(device=torch.device("cpu"), dtype=torch.float32),
                   DeviceSettings(device=torch.device("cuda"), dtype=torch.float16, offload="model")):
        manager = RecordingManager([checkpoint_dir], device, cache_size=2)
        manager.load("sd1.safetensors")
        manager.load("sd1-other.safetensors")
        manager.load("sd1.safetensors")
        assert not manager.moves, device


def test_the_option_reaches_the_manager(tmp_path):
    from backend.app_context import AppPaths, build_app_context

    ctx = build_app_context(AppPaths(root=tmp_path, builtin_checkpoints=[]), CUDA)
    assert ctx.manager.keep_in_cpu is True
    ctx.options.update(sd_checkpoints_keep_in_cpu=False)
    assert ctx.manager.keep_in_cpu is False
