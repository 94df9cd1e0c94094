"""ControlNet model files: find, identify, hash, load (offline, safely) and cache them."""
from .convert import build_controlnet, load_file, load_folder
from .scan import identify, old_model_hash
from .store import ControlNetStore
from .types import ControlNetInfo, ControlNetLoadError, UnknownControlNetError, UnsupportedControlNet

__all__ = ["ControlNetInfo", "ControlNetLoadError", "ControlNetStore", "UnknownControlNetError",
           "UnsupportedControlNet", "build_controlnet", "identify", "load_file", "load_folder", "old_model_hash"]
