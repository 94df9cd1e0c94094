"""HTTP Basic auth for every API route (`--api-auth user:pass[,user2:pass2]`)."""
from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

Credentials = list[tuple[str, str]]


def parse_credentials(spec: str | None, path: Path | None = None) -> Credentials:
    """`user:pass` pairs separated by commas (or lines, in a file), as A1111's --gradio-auth(-path)."""
    text = ",".join(part for part in (spec, path.read_text(encoding="utf-8") if path else None) if part)
    pairs = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"credentials must be user:password, got {user or item!r}:…")
        pairs.append((user, password))
    return pairs


def _matches(given: HTTPBasicCredentials, credentials: Credentials) -> bool:
    found = False
    for user, password in credentials:  # compare every pair: the time taken says nothing
        same_user = secrets.compare_digest(given.username.encode(), user.encode())
        same_password = secrets.compare_digest(given.password.encode(), password.encode())
        found |= same_user and same_password
    return found


def basic_auth_dependency(credentials: Credentials) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request carries one of `credentials`.

    The user name is kept on `request.state.api_user`, so jobs know whose they are.
    """
    basic = HTTPBasic(auto_error=False)

    def check(request: Request, given: HTTPBasicCredentials | None = Depends(basic)) -> None:
        request.state.api_user = None
        if not credentials:
            return
        if given is None or not _matches(given, credentials):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
        request.state.api_user = given.username

    return check


def caller(request: Request) -> str:
    """Who is asking: the auth user, else the client's address. Owners of API jobs."""
    user = getattr(request.state, "api_user", None)
    if user:
        return f"api:{user}"
    return f"api@{request.client.host if request.client else 'unknown'}"
