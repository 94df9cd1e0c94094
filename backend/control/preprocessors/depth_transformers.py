"""depth_anything and depth_dpt: Hugging Face transformers depth models kept as folders in the annotator dir.

A folder (config.json, preprocessor_config.json, model.safetensors or
pytorch_model.bin, possibly sharded) is found by its config's model_type, the
usual name first. The network is built from the config and filled from the
weights read by the studio's safe loader; transformers never opens the weights file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.control.preprocessors.imaging import hwc3, normalise, to_uint8
from backend.control.preprocessors.spec import AnnotatorLoadError, AnnotatorMissingError, Entry, Job, PreprocessorSpec
from backend.control.preprocessors.weights import read_weights

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def find_folder(annotator_dir: Path, preferred: str, model_types: tuple[str, ...]) -> Path | None:
    """The usual folder name first, then any subfolder whose config.json names one of `model_types`."""
    if not annotator_dir.is_dir():
        return None
    others = sorted(p for p in annotator_dir.iterdir() if p.is_dir() and p.name != preferred)
    for folder in [annotator_dir / preferred, *others]:
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
        if model_type in model_types:
            return folder
    return None


def weight_files(folder: Path) -> list[Path]:
    for index in _INDEXES:
        if (folder / index).is_file():
            try:
                shards = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()
            except (OSError, ValueError, KeyError, AttributeError):
                return []
            return [folder / name for name in sorted(set(map(str, shards)))]
    return [folder / name for name in _WEIGHTS if (folder / name).is_file()][:1]


def _needs(annotator_dir: Path, preferred: str, model_types: tuple[str, ...]) -> tuple[Path | None, list[Path]]:
    folder = find_folder(annotator_dir, preferred, model_types)
    if folder is None:
        return None, [annotator_dir / preferred / "config.json"]
    missing = [] if (folder / "preprocessor_config.json").is_file() else [folder / "preprocessor_config.json"]
    files = weight_files(folder)
    missing += [f for f in files if not f.is_file()] if files else [folder / _WEIGHTS[0]]
    return folder, missing


def _load(job: Job, folder: Path):
    from transformers import AutoConfig, AutoImageProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING

    # JSON only; trust_remote_code stays off, so a config cannot name code to run
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        state_dict.update(read_weights(path, job.spec.name))
    try:
        model_class = MODEL_FOR_DEPTH_ESTIMATION_MAPPING[type(config)]
        # from_pretrained with our tensors (no path): transformers applies its key conversions
        # (v5 renames older checkpoint keys on load) but opens no weight file itself
        model, info = model_class.from_pretrained(None, config=config, state_dict=state_dict, local_files_only=True,
                                                  output_loading_info=True)
    except Exception as exc:  # a config/weights mismatch surfaces as any of several errors
        raise AnnotatorLoadError(f"{job.spec.name} cannot use {folder}: {str(exc).strip()[:300]}") from None
    wrong = sorted(map(str, [*info.get("missing_keys", []), *info.get("mismatched_keys", []),
                             *info.get("unexpected_keys", [])]))
    if wrong:  # transformers would fill the gaps with random values; a depth map from those is noise
        raise AnnotatorLoadError(f"{job.spec.name} cannot use {folder}: its weights do not fit its config.json "
                                 f"({len(wrong)} keys missing, unexpected or of another shape, e.g. {wrong[0]})")
    return model.float().eval().to(job.device), processor, getattr(config, "depth_estimation_type", "") == "metric"


def _runner(preferred: str, model_types: tuple[str, ...], description: str):
    def build(job: Job):
        folder, missing = _needs(job.annotator_dir, preferred, model_types)
        if folder is None or missing:
            raise AnnotatorMissingError(
                f"{job.spec.name} needs {description} in {folder or job.annotator_dir / preferred} "
                f"(missing {', '.join(str(p.relative_to(job.annotator_dir)) for p in missing)})")
        return _load(job, folder)

    def run(job: Job, image: np.ndarray, a: float, b: float) -> np.ndarray:
        # cached under the preprocessor's name: a second run looks at no file, not even config.json
        model, processor, metric = job.network(job.spec.name, lambda: build(job))
        h, w = image.shape[:2]
        pixels = processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            depth = model(pixel_values=pixels.to(job.device, torch.float32)).predicted_depth
            depth = torch.nn.functional.interpolate(depth[:, None].float(), size=(h, w), mode="bicubic",
                                                    align_corners=False)[0, 0].cpu().numpy()
        # ControlNet depth maps are near-bright; a metric model gives metres, so far is large
        return hwc3(to_uint8(normalise(-depth if metric else depth)))
    return run


def _missing(preferred: str, model_types: tuple[str, ...]):
    return lambda annotator_dir: _needs(annotator_dir, preferred, model_types)[1]


_DA = ("depth-anything", ("depth_anything",), "a transformers Depth Anything folder (config.json, "
       "preprocessor_config.json, model.safetensors; e.g. LiheYoung/depth-anything-small-hf)")
_DPT = ("dpt", ("dpt",), "a transformers DPT folder (config.json, preprocessor_config.json, model.safetensors; "
        "e.g. Intel/dpt-hybrid-midas)")

ENTRIES = (
    Entry(PreprocessorSpec("depth_anything", weight_files=(_DA[0],), category="depth"), _runner(*_DA),
          _missing(*_DA[:2])),
    Entry(PreprocessorSpec("depth_dpt", weight_files=(_DPT[0],), category="depth"), _runner(*_DPT),
          _missing(*_DPT[:2])),
)
