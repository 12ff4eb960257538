"""How the jobs of one run hear that they ended: each job's callbackUrl, and its wake-ups.

With ``callback.listen`` the run serves the receiver itself (in a thread) and a callback wakes its
job at once. With only ``callback.public_url`` the receiver runs elsewhere (``opus-run callbacks
serve`` on the same journal): the run reads the callbacks it accepted from the journal a few
times a second. Either way a wake-up only makes the job read its status now; the safety reads
of ``wait.safety_interval`` go on, so a job whose callback never comes still finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from ..callbacks import ReceiverSettings, callback_url, job_token, token_digest
from ..callbacks.tokens import KEY_PURPOSE

if TYPE_CHECKING:  # pragma: no cover
    from ..asgiserver import ThreadedServer
    from ..planning import JobPlan
    from ..state import Journal
    from .session import Session

#: How often a run whose receiver is another process looks for its callbacks in the journal.
JOURNAL_LOOK_SECONDS = 0.2


class Listener:
    """The callbacks of run ``run_id``: :meth:`url_for` before execute, :meth:`wait` after."""

    def __init__(self, journal: Journal, run_id: str, public_url: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.public_url = public_url
        self._key = journal.derived_key(KEY_PURPOSE, run_id)
        self._events: dict[int, asyncio.Event] = {}
        #: rows woken before they were followed (a resumed run reads old callbacks first)
        self._early: set[int] = set()

    def url_for(self, row_id: int, plan_key: str, job_id: str) -> str:
        """The callbackUrl for the job: its token's digest is journaled before it is sent."""
        token = job_token(self._key, self.run_id, plan_key, job_id)
        self.journal.add_callback(row_id, token_digest(token))
        self.follow(row_id)
        return callback_url(self.public_url, token)

    def follow(self, row_id: int) -> None:
        """Keep the wake-ups of the job at ``row_id`` from now on (a resumed job's too)."""
        event = self._events.setdefault(row_id, asyncio.Event())
        if row_id in self._early:
            self._early.discard(row_id)
            event.set()

    def wake(self, run_id: str, row_id: int) -> None:
        """A callback for the job at ``row_id`` was accepted (called on the run's loop)."""
        if run_id != self.run_id:
            return  # a receiver serves every run of its journal; this one is another's
        event = self._events.get(row_id)
        if event is None:
            self._early.add(row_id)
        else:
            event.set()

    async def wait(self, row_id: int, timeout: float) -> bool:
        """Until the job is woken (True) or ``timeout`` seconds pass (False)."""
        event = self._events.get(row_id)
        if event is None:
            await asyncio.sleep(max(0.0, timeout))
            return False
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        event.clear()
        return True

    def done(self, row_id: int) -> None:
        """The job is no longer followed: a late callback for it changes nothing."""
        self._events.pop(row_id, None)
        self._early.discard(row_id)


def agreed(current: ReceiverSettings, plan: JobPlan) -> ReceiverSettings:
    """``current`` completed by the plan's spec; a spec naming another receiver is an error
    (a run serves one receiver, whatever the number of specs)."""
    theirs = plan.receiver
    for name in ("listen", "public_url"):
        mine, other = getattr(current, name), getattr(theirs, name)
        if mine is not None and other is not None and mine != other:
            shown = (lambda v: f"{v[0]}:{v[1]}" if isinstance(v, tuple) else v)
            raise plan.spec.error(
                f"callback.{name} is {shown(other)!r} here but {shown(mine)!r} in another spec of this run; "
                f"a run has one callback receiver: give every spec the same callback.{name}, or set it "
                "once in opus-runner.toml's [callback] table or with the command line",
                ("callback", name),
            )
    return ReceiverSettings(current.listen or theirs.listen, current.public_url or theirs.public_url)


def agreed_by(plans: Iterable[JobPlan]) -> ReceiverSettings:
    settings = ReceiverSettings()
    for plan in plans:
        settings = agreed(settings, plan)
    return settings


@contextlib.asynccontextmanager
async def receiving(session: Session, settings: ReceiverSettings) -> AsyncIterator[Receiving]:
    """The run's receiver for as long as the run lasts (started before anything is submitted,
    so a port in use stops the run before its first job)."""
    receiving = Receiving(session, settings)
    try:
        await receiving.start()
        yield receiving
    finally:
        await receiving.aclose()


class Receiving:
    """The receiver a run starts (``listen``), or the journal it watches (only ``public_url``)."""

    def __init__(self, session: Session, settings: ReceiverSettings) -> None:
        self.session = session
        self.settings = settings
        self.public_url = settings.public_url
        self.listener: Listener | None = None
        self._server: ThreadedServer | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.listen is None:
            return
        from ..callbacks.server import receiver_server

        journal = self.session.open_journal()
        loop = asyncio.get_running_loop()

        def on_wake(run_id: str, row_id: int) -> None:
            with contextlib.suppress(RuntimeError):  # the run's loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._wake, run_id, row_id)

        host, port = self.settings.listen
        server, _receiver = receiver_server(journal, host, port, on_wake=on_wake)
        await asyncio.to_thread(server.start)
        self._server = server
        if self.public_url is None:
            self.public_url = server.base_url  # a loopback address (checked with the settings)
        self.session.log.info("callback receiver listening on %s; Opus is given %s", server.base_url, self.public_url)

    def begin(self, run_id: str) -> Listener | None:
        """Listen for run ``run_id`` (known once the run is journaled); None without a receiver."""
        if self.public_url is None:
            return None
        self.listener = Listener(self.session.open_journal(), run_id, self.public_url)
        if self._server is None:
            self._watch = asyncio.ensure_future(self._watch_journal(self.listener))
        return self.listener

    def _wake(self, run_id: str, row_id: int) -> None:
        if self.listener is not None:
            self.listener.wake(run_id, row_id)

    async def _watch_journal(self, listener: Listener) -> None:
        """Wake the jobs whose callbacks another process's receiver accepted (from the start:
        a resumed run hears of callbacks that came while it was down)."""
        seq = 0
        while True:
            for seq, row_id in listener.journal.callbacks_since(listener.run_id, seq):  # noqa: B007
                listener.wake(listener.run_id, row_id)
            await asyncio.sleep(JOURNAL_LOOK_SECONDS)

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.stop)
