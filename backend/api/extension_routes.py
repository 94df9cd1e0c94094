"""Extensions' own API routes, each under /ext/<extension id>/, behind --api-auth like every route."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from backend.api.auth import Credentials, basic_auth_dependency
from backend.api.routes import ErrorMappingRoute


def create_extension_router(hooks, credentials: Credentials | None = None) -> APIRouter:
    """The routes extensions registered (`api.add_route`); the caller mounts the router at /ext."""
    router = APIRouter(route_class=ErrorMappingRoute, dependencies=[Depends(basic_auth_dependency(credentials or []))])
    for ext_id, route in hooks.routes:
        router.add_api_route(f"/{ext_id}{route.path}", route.endpoint, methods=list(route.methods),
                             name=f"{ext_id}{route.path}".replace("/", "_"), tags=[f"extension {ext_id}"])
    return router
