"""Extensions: user code in ./extensions/<name>/ that extends the studio through a small versioned API."""
from backend.extensions.api import API_VERSION, ExtensionApi, Hooks
from backend.extensions.loader import ExtensionRecord, Extensions, load_extensions

__all__ = ["API_VERSION", "ExtensionApi", "ExtensionRecord", "Extensions", "Hooks", "load_extensions"]
