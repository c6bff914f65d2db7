"""Refinement sessions: the turns of each, in memory only, the least recently used dropped beyond a bound.

    store = SessionStore(max_sessions=1000)
    session, turns = store.record(None, turn)      # a new session; its turns so far
    store.get(session); store.delete(session)
"""

from __future__ import annotations

import collections
import secrets
import threading


class SessionStore:
    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._sessions: collections.OrderedDict[str, list[dict]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, session: str) -> list[dict] | None:
        """A copy of the session's turns, or None when unknown (or expired)."""
        with self._lock:
            turns = self._sessions.get(session)
            return list(turns) if turns is not None else None

    def delete(self, session: str) -> bool:
        """Forget a session; False when there was none by that id."""
        with self._lock:
            return self._sessions.pop(session, None) is not None

    def record(self, session: str | None, turn: dict) -> tuple[str, dict, list[dict]]:
        """Append ``turn`` (numbered here) to ``session`` (a new one when None or unknown).

        Returns (session id, the numbered turn, all the session's turns)."""
        with self._lock:
            if session is None or session not in self._sessions:
                session = secrets.token_urlsafe(12)
                self._sessions[session] = []
            turns = self._sessions[session]
            turn = {"turn": len(turns) + 1, **turn}
            turns.append(turn)
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return session, turn, list(turns)
