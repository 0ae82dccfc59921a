"""The HTTP read API that `task-history serve` runs: history pages, a live stream, dead letters.

What the timeline page in static/ relies on (agreed with it; keep both sides in step):

- `/` is static/index.html and `/static/...` the files beside it; neither asks for the token,
  so the page always loads and can show a refusal itself.
- With TASK_HISTORY_API_TOKEN set, every other route but /healthz and /readyz answers 401
  (with `WWW-Authenticate: Bearer`) unless the request carries `Authorization: Bearer TOKEN`.
  The page reads the live stream with fetch(), so the token travels in that header there too;
  no token is ever taken from the query string (it would end up in logs and history).
- GET /tasks/{id}/history/stream sends `retry:` once, then each new entry as `id: CURSOR` and
  `data: ENTRY JSON`, and a `: keep-alive` comment while idle. A reconnect that sends
  `Last-Event-ID` gets what arrived after that entry first, then live ones, counted by
  arrival number (an entry committed out of order by another writer of the task can be missed
  or repeated: docs/reading.md states it); without it, only entries stored from then on
  (`?from_start=true`: the task's current entries first).
- Errors are JSON `{"detail": "one readable line"}`, a 500 too (never the database's own text).
  A bad request is a 4xx, never a 5xx; a page stops at a byte budget as well as at `limit`.
- Every answer carries a Content-Security-Policy the page works under: its own scripts,
  styles and requests only, no inline script or style element, nothing from another site.
"""

from __future__ import annotations

from consumer.api.app import create_app

__all__ = ["create_app"]
