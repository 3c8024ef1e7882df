"""The OpenAPI document's security section, when the API takes bearer tokens."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .auth import required_role


def declare_bearer_auth(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation but the health checks takes a bearer token.

    The Swagger UI at ``/docs`` then offers its "Authorize" button. Which
    operation needs a token is :func:`~.auth.required_role`'s answer, the
    rule the gate applies, so the document cannot disagree with it.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "roles: read, submit, admin"}
            }
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if required_role(method.upper(), path) is not None:
                        operation["security"] = [{"bearer": []}]
                        operation.setdefault("responses", {}).update(
                            {
                                "401": {"description": "missing or invalid bearer token"},
                                "403": {"description": "the token's role is too low"},
                            }
                        )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
