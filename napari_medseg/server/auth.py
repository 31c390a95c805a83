"""The server's bearer token: made on first start, kept 0600 in MEDSEG_HOME (or a ``--token-file``), compared
in constant time. Torch-free (the client reads token files with it too)."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import MedsegError

TOKEN_ENV = "MEDSEG_SERVER_TOKEN"


def default_token_file() -> Path:
    from ..models.weights import medseg_home

    return medseg_home() / "server" / "token"


def read_token(path: str | Path) -> str:
    """The token in ``path`` (one line); a missing, unreadable or empty file is a one-line error."""
    path = Path(path).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MedsegError(f"Cannot read the server token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise MedsegError(f"The server token file {path} is empty")
    return token


def ensure_token(path: str | Path | None = None) -> tuple[str, Path]:
    """(token, file): the file's token, or a new random one written there with mode 0600 on first start."""
    path = Path(path).expanduser() if path else default_token_file()
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise MedsegError(f"The token file {path} is readable by others (mode {mode:o}); chmod 600 it")
        return read_token(path), path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n", mode=0o600)
    return token, path


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the bearer token a request carried."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def client_token(token: str | None = None, token_file: str | Path | None = None) -> str:
    """The token a client sends: ``token``, else ``token_file``'s, else $MEDSEG_SERVER_TOKEN (one-line error if none)."""
    if token:
        return token
    if token_file:
        return read_token(token_file)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    raise MedsegError(f"No server token: set {TOKEN_ENV} or pass --token-file (the server prints where its token is)")
