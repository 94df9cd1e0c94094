"""Face restoration as A1111 does it: find faces, align each to FFHQ, restore it, paste it back.

GFPGAN and CodeFormer run through spandrel (their files are read by the
studio's safe loader); the face detector (RetinaFace) and parser (ParseNet)
are our own networks in facexlib's layout. Models load on first use and stay
cached until their file changes or `refresh()`; the library is the only owner
of that state. The result is at full strength: the caller blends it with the
original by the user's visibility setting.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from backend.extras.faces.alignment import alignment_matrix, paste_face, warp_face
from backend.extras.faces.detection import FaceDetector
from backend.extras.faces.errors import FaceRestoreError
from backend.extras.faces.files import find_named, find_restorer_file, shown
from backend.extras.faces.parsenet import PARSING_FILE, FaceParser, ParseNet
from backend.extras.faces.retinaface import RESNET50, VARIANTS, RetinaFace
from backend.extras.faces.weights import load_network
from backend.extras.spandrel_models import ExtrasModelError, load_image_model
from backend.images.loading import to_rgb

FACE_RESTORERS = ("CodeFormer", "GFPGAN")
_MARKERS = {"CodeFormer": "codeformer", "GFPGAN": "gfpgan"}
_USUAL_FILES = {"CodeFormer": "codeformer-v0.1.0.pth", "GFPGAN": "GFPGANv1.4.pth"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass
class FaceRestoration:
    image: Image.Image
    faces: int  # faces restored
    message: str  # "no face found" when there were none


class FaceRestorerLibrary:
    def __init__(self, gfpgan_dirs: Sequence[Path], codeformer_dirs: Sequence[Path], facexlib_dirs: Sequence[Path],
                 device: torch.device, dtype: torch.dtype):
        self._dirs = {"GFPGAN": [Path(d) for d in gfpgan_dirs], "CodeFormer": [Path(d) for d in codeformer_dirs]}
        helper_dirs = [*facexlib_dirs, *gfpgan_dirs, *codeformer_dirs]  # facexlib's own folder first
        self._helper_dirs = list(dict.fromkeys(Path(d) for d in helper_dirs))
        self.device = torch.device(device)
        self.dtype = dtype
        self._lock = threading.RLock()
        self._loaded: dict[str, tuple[Path, tuple[int, int], object]] = {}

    # ----- what is there
    def entries(self) -> list[dict]:
        """GET /sdapi/v1/face-restorers: the folder each restorer reads (where its file is, else its first)."""
        out = []
        for name in FACE_RESTORERS:
            found = self._restorer_file(name)
            folder = found.parent if found else (self._dirs[name][0] if self._dirs[name] else None)
            out.append({"name": name, "cmd_dir": str(folder) if folder is not None else None})
        return out

    def available(self) -> list[str]:
        return [name for name in FACE_RESTORERS if self._restorer_file(name) is not None]

    def refresh(self) -> None:
        """Forget every loaded model; the next restore finds and loads the files afresh."""
        with self._lock:
            self._loaded.clear()

    def check_ready(self, restorer: str) -> None:
        """FaceRestoreError, naming the missing file and its folder, unless `restorer` can run: before a job."""
        self._restorer_path(self._canonical(restorer))
        self._detector_path()

    # ----- restoring
    def restore(self, image: Image.Image, restorer: str, *, codeformer_weight: float = 0.5,
                should_stop: Callable[[], bool] | None = None) -> FaceRestoration:
        name = self._canonical(restorer)
        if not 0.0 <= float(codeformer_weight) <= 1.0:
            raise FaceRestoreError(f"CodeFormer weight must be between 0 and 1, not {codeformer_weight}")
        rgb, alpha = _split_alpha(image)
        stop = should_stop or (lambda: False)
        with self._lock:
            restorer_path, detector_path = self._restorer_path(name), self._detector_path()
            detector = self._cached("detector", detector_path, lambda: self._load_detector(detector_path))
            face_net = self._cached(name, restorer_path, lambda: self._load_restorer(name, restorer_path))
            parser_path = find_named(self._helper_dirs, PARSING_FILE)
            parser = None if parser_path is None else self._cached(
                "parser", parser_path, lambda: FaceParser(load_network(
                    ParseNet, parser_path, "face parsing (ParseNet)", self.device), self.device))
            if stop():
                return FaceRestoration(_join_alpha(rgb, alpha), 0, "stopped before any face was restored")
            faces = detector.detect(rgb)
            if not faces:
                return FaceRestoration(_join_alpha(rgb, alpha), 0, "no face found")
            canvas = rgb.astype(np.float32)
            done = 0
            for face in faces:
                if stop():
                    break
                matrix = alignment_matrix(face.landmarks)
                restored = self._run(face_net, name, warp_face(rgb, matrix), float(codeformer_weight))
                paste_face(canvas, restored, matrix, parser.mask(restored) if parser is not None else None)
                done += 1
        result = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        return FaceRestoration(_join_alpha(result, alpha), done, _message(name, done, len(faces), codeformer_weight))

    # ----- files and models
    def _canonical(self, restorer: str) -> str:
        for name in FACE_RESTORERS:
            if str(restorer).strip().lower() == name.lower():
                return name
        raise FaceRestoreError(f"unknown face restorer {restorer!r}; choose one of {', '.join(FACE_RESTORERS)}")

    def _restorer_file(self, name: str) -> Path | None:
        return find_restorer_file(self._dirs[name], _MARKERS[name])

    def _restorer_path(self, name: str) -> Path:
        found = self._restorer_file(name)
        if found is None:
            raise FaceRestoreError(f"{name} needs its model file ({_USUAL_FILES[name]}); put it in "
                                   f"{shown(self._dirs[name])}")
        return found

    def _detector_path(self) -> Path:
        for variant in VARIANTS:
            found = find_named(self._helper_dirs, variant.file_name)
            if found is not None:
                return found
        raise FaceRestoreError(f"face restoration needs the face detector {RESNET50.file_name} (RetinaFace, as "
                               f"facexlib downloads it); put it in {shown(self._helper_dirs)}")

    def _cached(self, role: str, path: Path, load: Callable[[], object]):
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        held = self._loaded.get(role)
        if held is not None and held[0] == path and held[1] == signature:
            return held[2]
        self._loaded.pop(role, None)  # let the old one go before the new one takes memory
        model = load()
        self._loaded[role] = (path, signature, model)
        return model

    def _load_detector(self, path: Path) -> FaceDetector:
        variant = next(v for v in VARIANTS if v.file_name.lower() == path.name.lower())
        network = load_network(lambda: RetinaFace(variant), path, f"face detection (RetinaFace {variant.name})",
                               self.device)
        return FaceDetector(network, self.device)

    def _load_restorer(self, name: str, path: Path):
        try:
            descriptor = load_image_model(path, self.device)
        except ExtrasModelError as exc:
            raise FaceRestoreError(f"{name} cannot use {path}: {exc}") from None
        if descriptor.architecture.id != name:
            raise FaceRestoreError(f"{name} cannot use {path}: it is a {descriptor.architecture.name} model")
        dtype = _model_dtype(descriptor, self.device, self.dtype)
        if dtype != torch.float32:
            descriptor.to(dtype)
        return descriptor

    def _run(self, descriptor, name: str, crop: np.ndarray, weight: float) -> np.ndarray:
        """One aligned crop (uint8 RGB) through the restorer: in [-1, 1], out as float RGB 0..255."""
        parameter = next(descriptor.model.parameters())
        batch = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        batch = batch.to(parameter.device, parameter.dtype)
        with torch.inference_mode():
            if name == "GFPGAN":  # fixed noise from the file: the same picture restores the same way every time
                out = descriptor.model(batch, return_rgb=False, randomize_noise=False)[0]
            else:  # CodeFormer: weight 0 trusts the codebook most, 1 keeps closest to the input
                out = descriptor.model(batch, weight=weight)[0]
        out = (out.float().clamp(-1.0, 1.0) + 1.0) * 127.5
        return out[0].permute(1, 2, 0).cpu().numpy()


def _model_dtype(descriptor, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float32 on the CPU; the studio's dtype on an accelerator when the architecture supports it."""
    if device.type == "cpu":
        return torch.float32
    if dtype == torch.float16 and descriptor.supports_half:
        return torch.float16
    if dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


def _split_alpha(image: Image.Image) -> tuple[np.ndarray, Image.Image | None]:
    """RGB pixels (uint8, upright, any bit depth or CMYK converted) and the alpha channel when there is one."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode in _ALPHA_MODES or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        return np.array(rgba)[:, :, :3], rgba.getchannel("A")
    return np.array(to_rgb(upright)), None


def _join_alpha(rgb: np.ndarray, alpha: Image.Image | None) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if alpha is not None:
        image.putalpha(alpha)
    return image


def _message(name: str, done: int, found: int, weight: float) -> str:
    what = f"{name} (weight {weight:g})" if name == "CodeFormer" else name
    if done < found:
        return f"stopped: restored {done} of {found} faces with {what}"
    return f"restored {done} face{'s' if done != 1 else ''} with {what}"
