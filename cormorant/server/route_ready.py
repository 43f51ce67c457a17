"""GET /ready: readiness of the model and of the process.

200 once the model is loaded and a warm-up generation went through; 503 before that and from the
moment a drain (SIGTERM) begins.
"""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.responses import json_response
from cormorant.server.state import get_state

router = APIRouter()


@router.get("/ready", summary="Readiness probe")
async def ready(request: Request) -> Response:
    lifecycle = get_state(request).lifecycle
    if lifecycle.is_draining:
        return json_response({"status": "draining"}, status=503,
                             headers={"retry-after": str(lifecycle.config.retry_after_s)})
    if not lifecycle.is_ready:
        return json_response({"status": "warming up"}, status=503,
                             headers={"retry-after": str(lifecycle.config.retry_after_s)})
    return json_response({"status": "ready"})
