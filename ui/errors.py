"""Turn exceptions into one line a user can act on."""
from __future__ import annotations

from pydantic import ValidationError


def user_message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err.get("loc", ())) or "request"
            parts.append(f"{field}: {err.get('msg', '').removeprefix('Value error, ')}")
        return "; ".join(parts)
    return str(exc) or type(exc).__name__
