"""RFC 9457 problem responses: every error cutover itself answers is one of these."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.headers import REQUEST_ID

CONTENT_TYPE = "application/problem+json"


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": f"urn:cutover:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    if request_id is not None:
        body["request_id"] = request_id
    response = web.Response(
        status=status, body=orjson.dumps(body), content_type=CONTENT_TYPE, headers=headers
    )
    if request_id is not None:
        response.headers[REQUEST_ID] = request_id
    return response
