"""Callbacks of engine runs: Opus POSTs a job's callback to ``opus-run callbacks serve
--engine temporal``, which checks the token's signature and signals the job's chunk workflow
(``wake``). The workflow then reads the job's status at once; polling on durable timers stays
the safety net, so a lost callback only makes a job's end be seen later.

The workers and the receiver share one secret (``OPUS_RUNNER_CALLBACK_SECRET``): tokens carry
their chunk workflow and plan key, signed, so the receiver needs no journal.
"""

from __future__ import annotations

import logging
from typing import Any

from ..callbacks.receiver import Receiver
from ..callbacks.tokens import ENGINE_SECRET_ENV, engine_key, read_signed
from ..errors import ConfigError
from .runs import EngineOptions, connect

log = logging.getLogger("opus_runner.callbacks")


def shared_key(environ: Any) -> bytes:
    """The token key from the shared secret, or one sentence saying how to set it."""
    from .. import redact

    secret = (environ.get(ENGINE_SECRET_ENV) or "").strip()
    if len(secret) < 16:
        raise ConfigError(
            f"callbacks of engine runs need a secret shared by the workers and the receiver: set {ENGINE_SECRET_ENV} "
            "to the same random value of 16 characters or more for both (python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    redact.register(secret)
    return engine_key(secret)


class EngineReceiver(Receiver):
    """Signals the chunk workflow of each callback whose token a worker signed."""

    def __init__(self, key: bytes, engine: EngineOptions) -> None:
        super().__init__()
        self.key = key
        self.engine = engine
        self._client: Any = None

    async def deliver(self, token: str, shape: Any) -> bool:
        found = read_signed(self.key, token)
        if not self.counted(found is not None):
            return False
        assert found is not None
        workflow_id, plan_key, job_id = found
        if self._client is None:  # made on the server's own loop
            self._client = await connect(self.engine)
        try:
            await self._client.get_workflow_handle(workflow_id).signal("wake", plan_key)
        except Exception as exc:  # a chunk that is over: the wake-up has nobody to wake
            log.info("callback for job %s (%s): %s could not be signalled: %s", job_id, plan_key, workflow_id, exc)
            return True
        log.debug("callback for job %s (%s) signalled to %s; body shape: %s", job_id, plan_key, workflow_id, shape)
        return True


def serve(engine: EngineOptions, key: bytes, host: str, port: int) -> None:
    """``opus-run callbacks serve --engine temporal`` until Ctrl-C or SIGTERM."""
    from ..callbacks.server import serve_receiver

    serve_receiver(
        EngineReceiver(key, engine), host, port,
        lambda url: f"signalling the engine runs on {engine.address} (namespace {engine.namespace}); submit runs with "
        f"--callback-public-url set to the https address that reaches {url}",
    )  # fmt: skip
