"""The sandbox's routes, one module per resource; each handler is ``(sandbox, request) -> Response``."""
