"""The no-resend rule of execute (``POST /job/execute``, v1 ``POST /case/{id}/execute``): a job is never started twice by this client.

Execute goes through the same retry loop as every call (:meth:`.transport.Transport.exchange`);
this module is the rule that loop asks after each attempt. The request is sent again only when:

- it provably never left this machine (a connect error, a connect or pool timeout), or
- an HTTP answer did come (429, 5xx, an unreadable 2xx or one too large to read: that request
  is over) and the job, read back, shows no input.

An ending without any answer (a read timeout, a dropped connection, an answer too slow to
finish) is never resent in-process: the request may still be on its way through a slow
gateway, so "no input yet" proves nothing. It is settled by reading the job: received -> an
unconfirmed :class:`~.answers.ExecuteOutcome`; otherwise :class:`ExecuteOutcomeUnknown` with
``answered=False`` (the journal keeps the job unconfirmed for ``resume`` to ask again).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx

from .. import redact
from ..errors import AnswerTooLarge, ExecuteNotReceived, ExecuteOutcomeUnknown, OpusRunnerError
from .answers import ExecuteOutcome, execute_answer
from .transport import NEVER_SENT, AnswerTooSlow, Ending, Resend, describe

log = logging.getLogger("opus_runner.http")

ENDPOINT = "/job/execute"


class ExecuteAttempts:
    """The :class:`~.transport.AttemptRule` of one execute of ``job_id``.

    ``read_received`` is :meth:`.client.OpusClient.execute_received`: whether the service shows
    the job got its payload.
    """

    def __init__(
        self,
        job_id: str,
        read_received: Callable[[str], Awaitable[tuple[bool | None, str]]],
        *,
        endpoint: str = ENDPOINT,
    ) -> None:
        self.job_id = job_id
        self.read_received = read_received
        #: the dialect's execute route (``/job/execute``, ``/case/{id}/execute``), for messages
        self.endpoint = endpoint

    def may_resend(self, error: httpx.TransportError) -> bool:
        return isinstance(error, NEVER_SENT)

    async def settle(self, ending: Ending, *, last: bool) -> ExecuteOutcome | Resend:
        if ending.response is not None:
            settled = execute_answer(self.job_id, ending.response, self.endpoint)
            if isinstance(settled, ExecuteOutcome):
                return settled
            why, cause = settled, None
        elif isinstance(ending.error, AnswerTooLarge):
            # An answer came, so the request is over, but it cannot be read: the job says.
            why, cause = ending.error.message, None
        elif isinstance(ending.error, AnswerTooSlow):
            why, cause = f"the server answered too slowly: {ending.error}", ending.error
        else:
            assert ending.error is not None
            why, cause = describe(ending.error), ending.error
        # The request may have reached the server: only the job itself can say. With no
        # answer at all (a timeout, a cut connection) it may also still be on its way, held
        # by a slow gateway: "no input" then proves nothing, so it is not sent again here.
        outcome = await self._resolve(why, cause, last=last or ending.response is None)
        if outcome is not None:
            return outcome
        return Resend(f"{why}; job {self.job_id} holds no input, so it is sent again")

    async def _resolve(
        self, reason: str, cause: BaseException | None, *, last: bool
    ) -> ExecuteOutcome | None:
        """Execute's ending was unclear: read what the service knows instead of guessing.

        Returns the unconfirmed outcome when the job got its payload, None when it provably
        did not and another attempt is allowed; raises :class:`ExecuteOutcomeUnknown` otherwise.
        """
        job_id = self.job_id
        again = (
            f"Look again with `opus-run status {job_id}`, or finish the run later with "
            "`opus-run resume`"
        )
        log.debug(redact.mask(f"POST {self.endpoint}: unclear answer ({reason}); reading the job"))
        try:
            received, status = await self.read_received(job_id)
        except OpusRunnerError as exc:
            unknown = ExecuteOutcomeUnknown(
                redact.mask(
                    f"the answer to execute was lost ({reason}) and job {job_id} could not be "
                    f"read either ({exc}); the request was not resent, so the job may or may "
                    f"not be running. {again}."
                ),
                method="POST",
                endpoint=self.endpoint,
                job_id=job_id,
            )
            unknown.answered = cause is None
            raise unknown from exc
        if received:
            return ExecuteOutcome(
                job_id=job_id,
                confirmed=False,
                status=status,
                message=redact.mask(
                    f"the answer to execute was lost ({reason}); job status is {status}"
                ),
            )
        if received is False and not last:
            return None
        answered = cause is None  # an HTTP answer came (429, 5xx...): the request is over
        if received is False and answered:
            shown, error = "still holds no input after the last attempt", ExecuteNotReceived
        elif received is False:
            shown = "holds no input yet, but the request got no answer and may still arrive"
            error = ExecuteOutcomeUnknown
        else:
            shown, error = "does not show whether it got one", ExecuteOutcomeUnknown
        unknown = error(
            redact.mask(
                f"the answer to execute was lost ({reason}) and job {job_id} (status "
                f"{status}) {shown}; the request was not resent, so the job cannot run "
                f"twice. {again}."
            ),
            method="POST",
            endpoint=self.endpoint,
            job_id=job_id,
        )
        unknown.answered = answered
        raise unknown from cause
