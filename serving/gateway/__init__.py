"""The OpenAI-compatible gateway: auth, request checks, relay to the teacher, call logging."""

from protege.serving.gateway.app import ChatCompletionsRoute, Gateway, create_app

__all__ = ["ChatCompletionsRoute", "Gateway", "create_app"]
