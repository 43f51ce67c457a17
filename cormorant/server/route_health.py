"""GET /health: liveness, 200 while the process is up and the engine makes progress.

503 when the engine loop died, or is stuck with work pending (server.watchdog.stall_reason:
no progress, neither a step nor engine CPU time, for ServerConfig.health_stall_s; or one step
past health_max_step_s). The body carries the engine's queue and block counts for operators."""
from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cormorant.server.responses import json_response
from cormorant.server.state import get_state

router = APIRouter()


@router.get("/health", summary="Liveness probe")
async def health(request: Request) -> Response:
    state = get_state(request)
    status, body = state.lifecycle.health(state.stats())
    body["models"] = sorted(state.pool.deployments)
    return json_response(body, status=status)
