"""Captions for pictures (A1111's Interrogate): BLIP from models/BLIP."""
from backend.interrogate.service import MODELS, InterrogateError, InterrogateService

__all__ = ["MODELS", "InterrogateError", "InterrogateService"]
