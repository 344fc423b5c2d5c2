"""SQL of the live view (tether.web): open sessions with their turn state, the events log.

Every query is O(open sessions) or O(page): the open sessions come from the
partial index ``sessions_open_created``, a session's newest turn event from
``events_session`` (one short backward walk per open session).
"""

from __future__ import annotations

# Turn events, written by the gateway around each agent turn (see tether.gateway).
TURN_STARTED = "turn_started"
TURN_ENDED = "turn_ended"

# One row per open session: what /api/v1/live shows, plus whether its newest
# turn event is a start (a turn is running). Column order: see views.LiveFacts.
OPEN_SESSIONS_LIVE = f"""
SELECT s.id, s.source, s.title, s.root_id, s.origin, s.created_at, s.last_active_at,
    s.owner_id, s.detached_at, s.message_count,
    (SELECT e.kind FROM events e
     WHERE e.session_id = s.id AND e.kind IN ('{TURN_STARTED}', '{TURN_ENDED}')
     ORDER BY e.id DESC LIMIT 1)
FROM sessions s
WHERE s.ended_at IS NULL
ORDER BY s.created_at, s.id
"""

EVENTS_AFTER = """
SELECT id, at, session_id, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?
"""

EVENT_BOUNDS = "SELECT MIN(id), MAX(id) FROM events"
