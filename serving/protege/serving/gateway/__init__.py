"""The OpenAI-compatible gateway: auth, request checks, routing, relay to the teacher, call logging."""

from protege.serving.gateway.app import ApiRoutes, Gateway, create_app

__all__ = ["ApiRoutes", "Gateway", "create_app"]
