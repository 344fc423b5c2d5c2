"""Who may read the live view: the gateway's token, Host allowlist and Origin check, over HTTP.

A browser logs in once with ``/login?token=...``, which sets an HttpOnly,
SameSite=Strict cookie holding the token (``EventSource`` cannot send headers;
the cookie goes with it). Scripts send ``Authorization: Bearer <token>``. The
page shell and its static files carry no data and need no token; every
``/api/`` route and ``/metrics`` do. Pure functions of the request's headers.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..gateway.security import Policy, Refusal, bearer, check_origin, token_ok

COOKIE = "tether_token"


def check_request(
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    policy: Policy,
    *,
    need_token: bool,
) -> Refusal | None:
    """None if the request may be served, else why not (Host, Origin, then the token)."""
    refused = check_origin(headers, policy)
    if refused is not None:
        return refused
    if not need_token:
        return None
    token = bearer(headers, {}) or cookies.get(COOKIE)
    if token is None:
        return Refusal(401, "token required: log in with /login?token=... or send a bearer token")
    if not token_ok(token, policy):
        return Refusal(401, "wrong token")
    return None
