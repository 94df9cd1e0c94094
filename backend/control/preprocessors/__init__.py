"""ControlNet preprocessors ("annotators"): sd-webui-controlnet's modules on weights from models/annotators."""
from backend.control.preprocessors.library import PreprocessorLibrary
from backend.control.preprocessors.spec import (
    AnnotatorLoadError,
    AnnotatorMissingError,
    PreprocessorSpec,
    Slider,
    UnknownPreprocessorError,
)

__all__ = ["AnnotatorLoadError", "AnnotatorMissingError", "PreprocessorLibrary", "PreprocessorSpec", "Slider",
           "UnknownPreprocessorError"]
