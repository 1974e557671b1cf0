"""The bridge's named tokens: who may connect, and with which role.

A token is a random secret with a name and a role (:mod:`.roles`).  The bridge keeps
only each secret's SHA-256, so the store on disk gives nothing away to a reader; a
bearer token is checked by hashing it, one dict lookup by hash, and a constant-time
comparison of the digests (:func:`hmac.compare_digest`).

The token named ``owner`` (role admin) is the one the discovery file holds, for the
user who started the bridge: it is set at every start (``--token``, or a new random
one).  The others are kept in a JSON file, mode 0600, loaded at start and rewritten
on every change (``kernelpit token add|revoke|rotate``), so they survive restarts::

    {"version": 1, "tokens": [
      {"name": "ci", "role": "call", "sha256": "<hex>", "created": 1763800000.0,
       "last_used": 1763800100.5}]}

A bridge started without a discovery file and without ``token_file`` keeps its
tokens in memory only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .roles import RANK, check_role

OWNER = "owner"
FILENAME = "kernelpit-tokens.json"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def new_secret() -> str:
    """A random token that never starts with "-" (so ``--token TOKEN`` parses on a command line)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenError(ValueError):
    """A token request that cannot be done (unknown name, a name taken, the owner's token)."""


@dataclass
class Token:
    name: str
    role: str
    sha256: bytes
    created: float
    last_used: float | None = None

    @property
    def rank(self) -> int:
        return RANK[self.role]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sha256": self.sha256.hex(),
                "created": self.created, "last_used": self.last_used}


class TokenStore:
    """Named tokens by hash.  ``path``: the JSON file (None: in memory only);
    ``on_owner_rotated(secret)`` is told the owner's new secret (the bridge rewrites its
    discovery file with it)."""

    def __init__(self, path: Path | None = None,
                 on_owner_rotated: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._on_owner_rotated = on_owner_rotated
        self._by_hash: dict[bytes, Token] = {}
        self._by_name: dict[str, Token] = {}
        if path is not None:
            self._load(path)

    # -- the hot path ---------------------------------------------------------------------------
    def authenticate(self, secret: str) -> Token | None:
        """The token whose secret this is, or None."""
        given = digest(secret)
        token = self._by_hash.get(given)
        if token is None or not hmac.compare_digest(token.sha256, given):
            return None
        token.last_used = time.time()
        return token

    # -- management (the admin RPCs) -------------------------------------------------------------
    def set_owner(self, secret: str) -> Token:
        """Make ``secret`` the owner's admin token (at every start)."""
        self._drop(OWNER)
        return self._put(Token(OWNER, "admin", digest(secret), time.time()))

    def add(self, name: str, role: str) -> tuple[Token, str]:
        """A new token and its secret (shown once)."""
        if not _NAME.match(name):
            raise TokenError(f"token name {name!r} is not allowed: use 1 to 64 letters, digits, "
                             "'-', '_' or '.'")
        try:
            check_role(role)
        except ValueError as exc:
            raise TokenError(str(exc)) from None
        if name in self._by_name:
            raise TokenError(f"a token named {name!r} exists already: pick another name, or "
                             f"`kernelpit token rotate {name}` to give it a new secret")
        secret = new_secret()
        token = self._put(Token(name, role, digest(secret), time.time()))
        self.save()
        return token, secret

    def revoke(self, name: str) -> Token:
        if name == OWNER:
            raise TokenError("the owner token (the discovery file's) cannot be revoked: "
                             "`kernelpit token rotate owner` replaces its secret instead")
        token = self._drop(self._get(name).name)
        self.save()
        return token

    def rotate(self, name: str) -> tuple[Token, str]:
        """A new secret for ``name`` (same role); the old one is refused from now on."""
        old = self._drop(self._get(name).name)
        secret = new_secret()
        token = self._put(Token(old.name, old.role, digest(secret), time.time()))
        self.save()
        if name == OWNER and self._on_owner_rotated is not None:
            self._on_owner_rotated(secret)
        return token, secret

    def list(self) -> list[Token]:
        return sorted(self._by_name.values(), key=lambda t: (t.name != OWNER, t.name))

    # -- storage ---------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the file (mode 0600, atomically); the owner's token is not kept in it."""
        if self.path is None:
            return
        data = {"version": 1, "tokens": [t.to_dict() for t in self.list() if t.name != OWNER]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)

    def _load(self, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise TokenError(f"token file {path} is writable by other users (or owned by "
                             f"another): anyone could add a token. Fix it with `chmod 600 {path}` "
                             "(as its owner), or delete it to start with the owner token only")
        try:
            data = json.loads(path.read_text())
            for item in data["tokens"]:
                self._put(Token(item["name"], check_role(item["role"]),
                                bytes.fromhex(item["sha256"]), float(item["created"]),
                                item.get("last_used")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"token file {path} cannot be read ({exc}); fix or delete it "
                             "(deleting it revokes every token but the owner's)") from None

    def _get(self, name: str) -> Token:
        token = self._by_name.get(name)
        if token is None:
            known = ", ".join(self._by_name) or "none"
            raise TokenError(f"no token named {name!r} (tokens: {known}); `kernelpit token list` "
                             "shows them")
        return token

    def _put(self, token: Token) -> Token:
        self._by_name[token.name] = token
        self._by_hash[token.sha256] = token
        return token

    def _drop(self, name: str) -> Token:
        token = self._by_name.pop(name, None)
        if token is not None:
            self._by_hash.pop(token.sha256, None)
        return token  # type: ignore[return-value]
