"""Signed-in browser sessions: an opaque random id in an HttpOnly cookie stands for an API key
kept server-side, with a CSRF token of its own for every form.

The key never reaches the browser after sign-in, and a session lives only in this process:
restarting the console signs everyone out, which is the safe direction. Pure apart from the
random tokens; time comes in as an argument.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Flash:
    """A one-time message shown on the next page (the outcome of a form)."""

    kind: str  # "ok" or "error"
    text: str


@dataclass(frozen=True)
class Session:
    session_id: str
    api_key: str
    csrf_token: str
    last_seen: datetime

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.csrf_token.encode()
        )


class SessionStore:
    def __init__(self, idle: timedelta) -> None:
        self._idle = idle
        self._sessions: dict[str, Session] = {}
        self._flashes: dict[str, Flash] = {}

    def open(self, api_key: str, now: datetime) -> Session:
        self.prune(now)
        session = Session(secrets.token_urlsafe(32), api_key, secrets.token_urlsafe(32), now)
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None, now: datetime) -> Session | None:
        """The live session with this id, its idle clock restarted; None once it idled out."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.last_seen > self._idle:
            self.close(session_id)
            return None
        session = replace(session, last_seen=now)
        self._sessions[session_id] = session
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)
            self._flashes.pop(session_id, None)

    def flash(self, session_id: str, flash: Flash) -> None:
        if session_id in self._sessions:
            self._flashes[session_id] = flash

    def take_flash(self, session_id: str) -> Flash | None:
        return self._flashes.pop(session_id, None)

    def prune(self, now: datetime) -> None:
        stale = [s for s, v in self._sessions.items() if now - v.last_seen > self._idle]
        for session_id in stale:
            self.close(session_id)

    def __len__(self) -> int:
        return len(self._sessions)
