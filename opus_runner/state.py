"""The state journal: every run, job, payload, status and delivery, in ``<state_dir>/state.db``.

The journal is what lets ``opus-run resume`` finish an interrupted or crashed run without
submitting anything twice, so it is written defensively:

- SQLite in WAL mode; every write is its own short transaction, so a ``kill -9`` at any moment
  leaves the journal consistent (each row is either fully there or not there at all).
- Several processes may share one journal (concurrent runs in one folder). Each process opens
  its own connection and SQLite serialises the writes; ``busy_timeout`` makes a writer wait for
  another instead of failing.
- Commits use ``synchronous=NORMAL``: they survive a crash or ``kill -9`` of the process,
  which is what resume needs; a power loss may take the last few (an fsync per write would
  cost about a millisecond per write on the event loop).
- Everything stored is masked with :mod:`opus_runner.redact` first, whoever calls: the journal
  never holds a registered secret, even when a caller forgets to mask.
- A job followed by callbacks has the digest of its callback token (never the token), and
  every callback accepted for it is listed with the shape of its body (never its values).
- For each ``secret()`` a run read, the journal keeps a keyed hash of the value (never the
  value), so ``resume`` can refuse a rotated secret instead of writing the old value, echoed
  back by a workflow, unmasked. The key is in :data:`SECRETS_KEY_NAME` beside the journal.

A job moves through phases, only forwards::

    planned -> initiated (job id known) -> executing (execute about to be sent)
            -> executed (execute acknowledged) -> finished (terminal status or given up)

Stdlib only and cheap to import: the CLI imports this module at start-up.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import os
import secrets as _random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from . import jsontext
from .errors import ConfigError, UsageError
from .redact import mask, mask_obj

__all__ = ["DB_NAME", "PHASES", "SCHEMA_VERSION", "JobRecord", "Journal", "Phase", "RunOwned", "RunRecord"]

DB_NAME = "state.db"
#: The random key of the secret hashes, next to the journal, readable by its owner only.
SECRETS_KEY_NAME = "secrets.key"
#: Bumped whenever the tables change; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 4
#: A run owned from another host whose heartbeat is older than this is taken over.
OWNER_STALE_SECONDS = 120.0
#: How often a running run tells the journal it is alive.
HEARTBEAT_SECONDS = 15.0
class Phase(enum.StrEnum):
    """Where a job is, in the only order a job may move through (the values are the journal's)."""

    PLANNED = "planned"
    INITIATED = "initiated"  # the job id is known
    EXECUTING = "executing"  # execute about to be sent, or sent without an answer yet
    EXECUTED = "executed"  # execute acknowledged
    FINISHED = "finished"  # a terminal status, or given up on


#: Job phases in the only order a job may move through them.
PHASES = tuple(phase.value for phase in Phase)
_RANK = {phase: i for i, phase in enumerate(PHASES)}

_BUSY_TIMEOUT_MS = 10_000
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    exit_code   INTEGER,
    argv        TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    options     TEXT NOT NULL
);
CREATE TABLE jobs (
    row_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    plan_key     TEXT NOT NULL,
    spec_path    TEXT NOT NULL,
    spec_digest  TEXT NOT NULL,
    spec_name    TEXT NOT NULL,
    workflow_key TEXT NOT NULL,
    title        TEXT NOT NULL,
    phase        TEXT NOT NULL,
    job_id       TEXT,
    payload      TEXT NOT NULL,
    plan         TEXT NOT NULL,
    status       TEXT,
    result       TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX jobs_by_run ON jobs(run_id, row_id);
CREATE INDEX jobs_by_job_id ON jobs(job_id);
CREATE TABLE status_history (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    row_id INTEGER NOT NULL REFERENCES jobs(row_id),
    at     TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX status_by_job ON status_history(row_id, seq);
CREATE TABLE owners (
    run_id     TEXT PRIMARY KEY REFERENCES runs(run_id),
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    token      TEXT NOT NULL,
    since      TEXT NOT NULL,
    heartbeat  REAL NOT NULL
);
CREATE TABLE deliveries (
    row_id INTEGER NOT NULL REFERENCES jobs(row_id),
    target TEXT NOT NULL,
    ok     INTEGER NOT NULL,
    error  TEXT,
    at     TEXT NOT NULL,
    PRIMARY KEY (row_id, target)
);
CREATE TABLE secrets (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    name   TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE callbacks (
    digest TEXT PRIMARY KEY,
    row_id INTEGER NOT NULL REFERENCES jobs(row_id),
    run_id TEXT NOT NULL REFERENCES runs(run_id)
);
CREATE TABLE callback_calls (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    at     TEXT NOT NULL,
    shape  TEXT NOT NULL
);
CREATE INDEX callback_calls_by_run ON callback_calls(run_id, seq);
"""


def _table_sql(name: str) -> str:
    """The CREATE statement of one table of :data:`_SCHEMA`, for migrations (IF NOT EXISTS: a
    journal migrated by hand or half-way keeps what it has)."""
    start = _SCHEMA.index(f"CREATE TABLE {name} ")
    return "CREATE TABLE IF NOT EXISTS " + _SCHEMA[start + len("CREATE TABLE ") : _SCHEMA.index(";", start)]

_JOB_COLUMNS = (
    "row_id, run_id, plan_key, spec_path, spec_digest, spec_name, workflow_key, title, phase, "
    "job_id, payload, plan, status, result, error, created_at, updated_at"
)


@dataclass(frozen=True)
class JobRecord:
    """One planned job as the journal last saw it (a snapshot; re-read it to see later writes)."""

    row_id: int
    run_id: str
    plan_key: str
    spec_path: str
    spec_digest: str
    spec_name: str
    workflow_key: str
    title: str
    phase: Phase
    job_id: str | None
    #: the masked ``jobPayloadSchemaInstance``
    payload: dict[str, Any]
    #: what the runner needs to rebuild the job on resume (vars/matrix/row/options), masked
    plan: dict[str, Any]
    #: the last status seen
    status: str | None
    #: ``JobResult.as_dict()``, masked
    result: dict[str, Any] | None
    error: str | None
    #: target key (``"outputs[0]:json"``) -> ``{"ok": bool, "error": str | None, "at": iso}``
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""

    @property
    def undelivered(self) -> list[str]:
        """Targets whose last delivery attempt failed, in the order they were first recorded."""
        return [target for target, d in self.deliveries.items() if not d["ok"]]


@dataclass(frozen=True)
class RunRecord:
    """One invocation of the runner: what was asked, and how it ended (``None`` while running)."""

    run_id: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    argv: list[str]
    cwd: str
    options: dict[str, Any]


_HOST = socket.gethostname()


class RunOwned(UsageError):
    """``resume`` of a run whose owner (another process) is still alive."""

    def __init__(self, message: str, *, run_id: str, pid: int, host: str) -> None:
        self.run_id, self.pid, self.host = run_id, pid, host
        super().__init__(message)


def _owner_alive(host: str, pid: int, heartbeat: float) -> bool:
    if host == _HOST:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # it exists, as another user
        except (OSError, ValueError):
            return False
        return True
    return time.time() - float(heartbeat) < OWNER_STALE_SECONDS


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    # Local time so the id matches the user's clock; the random tail keeps concurrent runs
    # started in the same second apart.
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{_random.token_hex(3)}"


def _text(value: str) -> str:
    return mask(str(value))


def _opt_text(value: str | None) -> str | None:
    return None if value is None else mask(str(value))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry_busy(step: Callable[[], _T]) -> _T:
    """Run ``step``, retrying for up to the busy timeout while SQLite reports a lock.

    Needed only where SQLite answers "locked" without calling its own busy handler.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _json_default(value: Any) -> str:
    # Dates, paths and other non-JSON values become text; mask that text too, since mask_obj
    # only looks inside strings, lists and dicts.
    return mask(str(value))


def _dump(value: Any) -> str:
    return jsontext.dumps(mask_obj(value), ensure_ascii=False, default=_json_default)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Journal:
    """The SQLite state journal at ``<state_dir>/state.db``.

    Safe to use from several threads (one connection behind a lock) and from several
    processes at once (SQLite locks the file). Use it as a context manager, or call
    :meth:`close`. Open a new ``Journal`` in a child process rather than sharing one across
    ``fork``.
    """

    def __init__(self, state_dir: Path) -> None:
        """Open the journal in ``state_dir``, creating the folder, the file and its tables."""
        state_dir = Path(state_dir)
        self.state_dir = state_dir
        self.path: Path = state_dir / DB_NAME
        self._lock = threading.RLock()
        #: who this Journal object is as a run owner: one process may hold several journals
        self._token = _random.token_hex(8)
        self._prepare_dir(state_dir)
        self._conn: sqlite3.Connection | None = self._connect()

    # -- opening and closing ------------------------------------------------------------

    @staticmethod
    def _prepare_dir(state_dir: Path) -> None:
        try:
            created = not state_dir.exists()
            state_dir.mkdir(parents=True, exist_ok=True)
            # Only ignore everything in a folder we own: a state_dir pointed at an existing,
            # populated folder (the project root, say) must not hide that folder from git.
            if created or not any(state_dir.iterdir()):
                try:
                    with open(state_dir / ".gitignore", "x", encoding="utf-8") as fh:
                        fh.write("*\n")
                except FileExistsError:
                    pass  # another process opening the same new journal got there first
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state folder {state_dir}: {exc.strerror or exc}; "
                "choose a writable folder with --state-dir or state_dir in opus-runner.toml"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: autocommit, transactions only where this module asks.
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the state journal {self.path}: {exc}; "
                "check the folder is writable or choose another with --state-dir"
            ) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # Switching a new file to WAL can report "locked" at once, without waiting, while
            # another process is switching it too: retry that step by hand.
            mode = _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"the state journal {self.path} cannot use WAL mode (got {mode!r}); "
                    "put state_dir on a local file system"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _retry_busy(lambda: self._migrate(conn))
        except sqlite3.OperationalError as exc:
            conn.close()
            if _is_busy(exc):
                raise self._locked() from None
            raise ConfigError(
                f"cannot open the state journal {self.path}: {exc}; "
                "check the folder is writable or choose another with --state-dir"
            ) from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(
                f"{self.path} is not a usable opus-runner state journal ({exc}); "
                "move it aside or choose another folder with --state-dir"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # IMMEDIATE takes the write lock first, so two processes opening a new journal at the
        # same moment cannot both create the tables.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version in (1, 2, 3):
                # Older journals keep every row: version 2 added run owners, version 3 the
                # secret hashes (their runs have none, so resuming them checks no secret),
                # version 4 the callback tokens (their jobs were followed by polling).
                if version < 2:
                    conn.execute(_table_sql("owners"))
                if version < 3:
                    conn.execute(_table_sql("secrets"))
                conn.execute(_table_sql("callbacks"))
                conn.execute(_table_sql("callback_calls"))
                conn.execute("CREATE INDEX IF NOT EXISTS callback_calls_by_run ON callback_calls(run_id, seq)")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the state journal {self.path} was written by a newer opus-runner "
                    f"(schema {version}, this one reads {SCHEMA_VERSION}); upgrade opus-runner "
                    "or choose another folder with --state-dir"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _locked(self) -> ConfigError:
        return ConfigError(
            f"the state journal {self.path} stayed locked by another process for "
            f"{_BUSY_TIMEOUT_MS // 1000} s; wait for that run to finish or choose another "
            "folder with --state-dir"
        )

    def close(self) -> None:
        """Close the connection; later calls raise. Closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # -- low-level helpers --------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the state journal {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction.

        WAL with ``synchronous=NORMAL``: a committed write survives a crash or ``kill -9`` of
        the process (what resume relies on); only a power loss can take the last commits. An
        fsync per commit would cost about a millisecond per write on the event loop.

        SQLite failures (locked for too long, disk full, read-only) become a
        :class:`ConfigError` naming the journal; errors raised by the body pass unchanged.
        """
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise self._locked() from None
                raise ConfigError(
                    f"cannot write the state journal {self.path}: {exc}; "
                    "check the disk has space and the folder is writable"
                ) from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    def _require_job(self, db: sqlite3.Connection, row_id: int) -> str:
        """Return the phase of job ``row_id`` inside a write, or raise if there is none."""
        row = db.execute("SELECT phase FROM jobs WHERE row_id = ?", (row_id,)).fetchone()
        if row is None:
            raise UsageError(f"no job row {row_id} in {self.path}")
        return str(row[0])

    def _advance(self, row_id: int, phase: str) -> None:
        """Move a job forwards to ``phase``; a job already past it keeps its phase."""
        with self._write() as db:
            current = self._require_job(db, row_id)
            if _RANK[phase] > _RANK[current]:
                db.execute(
                    "UPDATE jobs SET phase = ?, updated_at = ? WHERE row_id = ?",
                    (phase, _now(), row_id),
                )

    def _append_status(self, db: sqlite3.Connection, row_id: int, status: str) -> None:
        last = db.execute(
            "SELECT status FROM status_history WHERE row_id = ? ORDER BY seq DESC LIMIT 1",
            (row_id,),
        ).fetchone()
        if last is None or last[0] != status:
            db.execute(
                "INSERT INTO status_history (row_id, at, status) VALUES (?, ?, ?)",
                (row_id, _now(), status),
            )

    # -- runs ---------------------------------------------------------------------------

    def begin_run(
        self,
        *,
        argv: list[str],
        cwd: str,
        options: dict[str, Any],
        run_id: str | None = None,
    ) -> str:
        """Record the start of a run and return its id (``YYYYMMDD-HHMMSS-<6 hex>`` when new)."""
        run_id = _text(run_id) if run_id is not None else new_run_id()
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise UsageError(
                    f"run {run_id} already exists in {self.path}; "
                    "use `opus-run resume` to continue it, or pick another run id"
                )
            db.execute(
                "INSERT INTO runs (run_id, started_at, argv, cwd, options) VALUES (?, ?, ?, ?, ?)",
                (run_id, _now(), _dump([str(a) for a in argv]), _text(cwd), _dump(options)),
            )
            self._take(db, run_id)  # owned from the moment it exists
        return run_id

    def claim_run(self, run_id: str) -> None:
        """Make this process the run's one owner, or raise :class:`RunOwned` naming the owner.

        Read and write happen in one write transaction, so of two processes claiming the same
        run exactly one wins. An owner is gone when its process no longer exists (same host)
        or its heartbeat is older than :data:`OWNER_STALE_SECONDS` (another host).
        """
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (_text(run_id),)).fetchone() is None:
                raise self._unknown_run(run_id)
            row = db.execute(
                "SELECT host, pid, token, since, heartbeat FROM owners WHERE run_id = ?", (_text(run_id),)
            ).fetchone()
            if row is not None and row[2] != self._token and _owner_alive(row[0], row[1], row[4]):
                host, pid, since, beat = row[0], row[1], row[3], row[4]
                raise RunOwned(
                    f"run {run_id} is still being run by process {pid} on {host} (since {since}, last "
                    f"heard from {max(0, round(time.time() - beat))} s ago); wait for it to end, or "
                    f"stop that process first (a stopped or crashed run can be resumed)",
                    run_id=run_id,
                    pid=pid,
                    host=host,
                )
            self._take(db, run_id)

    def heartbeat(self, run_id: str) -> None:
        """Tell the journal this owner is alive (called every :data:`HEARTBEAT_SECONDS`)."""
        with self._write() as db:
            db.execute(
                "UPDATE owners SET heartbeat = ? WHERE run_id = ? AND token = ?",
                (time.time(), _text(run_id), self._token),
            )

    def release_run(self, run_id: str) -> None:
        """Give up ownership (the run ended, or stopped with its state saved)."""
        with self._write() as db:
            db.execute("DELETE FROM owners WHERE run_id = ? AND token = ?", (_text(run_id), self._token))

    def owner(self, run_id: str) -> dict[str, Any] | None:
        """The run's owner record (host, pid, since, heartbeat), or None."""
        rows = self._read("SELECT host, pid, since, heartbeat FROM owners WHERE run_id = ?", (_text(run_id),))
        return dict(rows[0]) if rows else None

    def _take(self, db: sqlite3.Connection, run_id: str) -> None:
        db.execute(
            "INSERT INTO owners (run_id, host, pid, token, since, heartbeat) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
            " token = excluded.token, since = excluded.since, heartbeat = excluded.heartbeat",
            (_text(run_id), _HOST, os.getpid(), self._token, _now(), time.time()),
        )

    def finish_run(self, run_id: str, exit_code: int) -> None:
        """Record how a run ended (a resumed run is finished again with its new exit code) and
        give up its ownership."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ? WHERE run_id = ?",
                (_now(), int(exit_code), _text(run_id)),
            )
            if cur.rowcount == 0:
                raise self._unknown_run(run_id)
            db.execute("DELETE FROM owners WHERE run_id = ? AND token = ?", (_text(run_id), self._token))

    # -- secrets ------------------------------------------------------------------------

    def record_secret(self, run_id: str, name: str, value: str) -> None:
        """Keep a keyed hash of the value secret ``name`` had in run ``run_id`` (the first one)."""
        digest = self._secret_digest(run_id, name, value, create=True)
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO secrets (run_id, name, digest) VALUES (?, ?, ?)",
                (_text(run_id), _text(name), digest),
            )

    def verify_secrets(self, run_id: str, environ: Mapping[str, str]) -> dict[str, str]:
        """The secrets run ``run_id`` used, by name, with their values from ``environ``.

        Raises :class:`UsageError` naming every secret that is unset or has another value than
        the run used: an output echoing the old value would not be masked.
        """
        rows = self._read("SELECT name, digest FROM secrets WHERE run_id = ? ORDER BY name", (_text(run_id),))
        found: dict[str, str] = {}
        unset: list[str] = []
        changed: list[str] = []
        for row in rows:
            name, digest = row["name"], row["digest"]
            value = environ.get(name)
            if value is None:
                unset.append(name)
            elif hmac.compare_digest(self._secret_digest(run_id, name, value, create=False), digest):
                found[name] = value
            else:
                changed.append(name)
        if unset or changed:
            problems = [f"{n} is not set" for n in unset] + [
                f"{n} has another value than the run used" for n in changed
            ]
            raise UsageError(
                f"run {run_id} cannot be resumed: {'; '.join(problems)}. Set "
                f"{'it' if len(problems) == 1 else 'each'} to the value the run started with (a "
                "workflow may echo a secret back, and only that value would be masked), or start a "
                "new run"
            )
        return found

    def _secret_digest(self, run_id: str, name: str, value: str, *, create: bool) -> str:
        # A keyed hash, not a plain one: a plain hash of a weak secret (a short token, a
        # password) is a lookup table away from the value, and the journal may be shared or
        # uploaded as a CI artifact. Without the key the digests say nothing.
        key = self._secrets_key(create=create)
        message = "\0".join((run_id, name, value)).encode("utf-8")
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def _secrets_key(self, *, create: bool) -> bytes:
        path = self.state_dir / SECRETS_KEY_NAME
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise UsageError(
                    f"the secrets this run used cannot be checked: {path}, the key of their hashes "
                    "in the journal, is missing; start a new run instead of resuming this one"
                ) from None
            key = self._create_secrets_key(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(key) < 32:
            raise ConfigError(f"{path} is not an opus-runner secrets key (too short); move it aside")
        return key

    @staticmethod
    def _create_secrets_key(path: Path) -> bytes:
        """Write a new random key, readable by its owner only, unless another process got there
        first (then that one is used: the digests it wrote depend on it)."""
        key = _random.token_bytes(32)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(temp, path)  # atomic, and never replaces a key already there
            except FileExistsError:
                key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the secrets key {path}: {exc.strerror or exc}; check the state folder is writable"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        return key

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id``; raises :class:`UsageError` naming the journal when unknown."""
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (_text(run_id),))
        if not rows:
            raise self._unknown_run(run_id)
        return self._run_record(rows[0])

    def latest_run(self, *, unfinished_only: bool = False) -> RunRecord | None:
        """The most recently started run, or ``None``.

        With ``unfinished_only``, the most recent run that still has work left: it never
        recorded its end, or one of its jobs is not finished, or a delivery of it failed.
        """
        sql = "SELECT * FROM runs"
        if unfinished_only:
            sql += (
                " WHERE finished_at IS NULL"
                " OR EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = runs.run_id"
                "            AND j.phase != 'finished')"
                " OR EXISTS (SELECT 1 FROM jobs j JOIN deliveries d ON d.row_id = j.row_id"
                "            WHERE j.run_id = runs.run_id AND d.ok = 0)"
            )
        # rowid is insertion order: unlike the id's local-time stamp it survives clock changes.
        rows = self._read(sql + " ORDER BY rowid DESC LIMIT 1")
        return self._run_record(rows[0]) if rows else None

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The ``limit`` most recent runs, newest first."""
        rows = self._read("SELECT * FROM runs ORDER BY rowid DESC LIMIT ?", (int(limit),))
        return [self._run_record(row) for row in rows]

    def _unknown_run(self, run_id: str) -> UsageError:
        recent = [r[0] for r in self._read("SELECT run_id FROM runs ORDER BY rowid DESC LIMIT 5")]
        hint = (
            f"the most recent runs are {', '.join(recent)}"
            if recent
            else "it holds no runs yet; check --state-dir or the folder you run from"
        )
        return UsageError(f"no run {mask(str(run_id))} in {self.path}; {hint}")

    @staticmethod
    def _run_record(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            exit_code=row["exit_code"],
            argv=_load(row["argv"]),
            cwd=row["cwd"],
            options=_load(row["options"]),
        )

    # -- jobs ---------------------------------------------------------------------------

    def add_job(
        self,
        run_id: str,
        *,
        plan_key: str,
        spec_path: str,
        spec_digest: str,
        spec_name: str,
        workflow_key: str,
        title: str,
        payload: dict[str, Any],
        plan: dict[str, Any],
    ) -> int:
        """Record a planned job of run ``run_id`` and return its row id (phase ``planned``)."""
        now = _now()
        with self._write() as db:
            run_id = _text(run_id)
            if not db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise UsageError(f"no run {run_id} in {self.path}; call begin_run first")
            cur = db.execute(
                "INSERT INTO jobs (run_id, plan_key, spec_path, spec_digest, spec_name,"
                " workflow_key, title, phase, payload, plan, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?, ?)",
                (
                    run_id,
                    _text(plan_key),
                    _text(spec_path),
                    _text(spec_digest),
                    _text(spec_name),
                    _text(workflow_key),
                    _text(title),
                    _dump(payload),
                    _dump(plan),
                    now,
                    now,
                ),
            )
            row_id = cur.lastrowid
        assert row_id is not None
        return row_id

    def set_job_id(self, row_id: int, job_id: str) -> None:
        """Record the job id from initiate (phase ``initiated``), committed on return.

        Call it before execute is sent: a job id the journal does not hold could not be
        re-attached by ``resume``. Replacing the id of a job whose execute may already have
        been sent is refused, since that job would be lost.
        """
        job_id = _text(job_id)
        with self._write() as db:
            phase = self._require_job(db, row_id)
            old = db.execute("SELECT job_id FROM jobs WHERE row_id = ?", (row_id,)).fetchone()[0]
            if _RANK[phase] >= _RANK["executing"] and old != job_id:
                raise ValueError(
                    f"job row {row_id} in {self.path} already has job id {old} and execute "
                    f"may have been sent; refusing to replace it with {job_id}"
                )
            new_phase = "initiated" if _RANK[phase] < _RANK["initiated"] else phase
            db.execute(
                "UPDATE jobs SET job_id = ?, phase = ?, updated_at = ? WHERE row_id = ?",
                (job_id, new_phase, _now(), row_id),
            )

    def mark_executing(self, row_id: int) -> None:
        """Phase ``executing``: committed right before ``POST /job/execute``.

        A job found in this phase on resume may or may not have started; resume reads its
        status instead of executing it again.
        """
        self._advance(row_id, "executing")

    def mark_executed(self, row_id: int) -> None:
        """Phase ``executed``: the server acknowledged execute."""
        self._advance(row_id, "executed")

    def add_status(self, row_id: int, status: str, *, executed: bool = False) -> None:
        """Set the job's last seen status; the history gains an entry only when it changed.

        ``executed``: the job has its payload, so its phase is at least ``executed`` (one write
        for the execute's acknowledgement and the first status read after it).
        """
        status = _text(status)
        with self._write() as db:
            phase = self._require_job(db, row_id)
            if executed and _RANK[phase] < _RANK["executed"]:
                db.execute("UPDATE jobs SET phase = 'executed' WHERE row_id = ?", (row_id,))
            self._append_status(db, row_id, status)
            db.execute(
                "UPDATE jobs SET status = ?, updated_at = ? WHERE row_id = ? "
                "AND status IS NOT ?",
                (status, _now(), row_id, status),
            )

    def set_result(
        self,
        row_id: int,
        *,
        status: str,
        result: dict[str, Any] | None,
        error: str | None,
        intended: Sequence[str] = (),
    ) -> None:
        """Record how the job ended (phase ``finished``); the status joins the history too.

        ``intended``: the delivery targets about to be written, marked intended (as
        :meth:`record_delivery` with ``ok=False``) in the same commit: one write instead of one
        per target, and a crash right after it still finds every target to check.
        """
        status = _text(status)
        with self._write() as db:
            self._require_job(db, row_id)
            self._append_status(db, row_id, status)
            db.execute(
                "UPDATE jobs SET phase = 'finished', status = ?, result = ?, error = ?, "
                "updated_at = ? WHERE row_id = ?",
                (
                    status,
                    None if result is None else _dump(result),
                    _opt_text(error),
                    _now(),
                    row_id,
                ),
            )
            for target in intended:
                self._upsert_delivery(db, row_id, target, ok=False, error=None)

    def record_delivery(
        self, row_id: int, target: str, *, ok: bool, error: str | None = None
    ) -> None:
        """Record the latest attempt to deliver the job's result to ``target`` (upsert).

        The runner records ``ok=False`` with no error before it writes (intended), then the
        outcome: a target still marked intended after a crash may or may not have been written.
        """
        with self._write() as db:
            self._require_job(db, row_id)
            self._upsert_delivery(db, row_id, target, ok=ok, error=error)

    @staticmethod
    def _upsert_delivery(db: sqlite3.Connection, row_id: int, target: str, *, ok: bool, error: str | None) -> None:
        db.execute(
            "INSERT INTO deliveries (row_id, target, ok, error, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (row_id, target) DO UPDATE SET"
            " ok = excluded.ok, error = excluded.error, at = excluded.at",
            (row_id, _text(target), 1 if ok else 0, _opt_text(error), _now()),
        )

    def jobs(self, run_id: str) -> list[JobRecord]:
        """Every job of run ``run_id``, in plan order; raises :class:`UsageError` when unknown."""
        run_id = _text(run_id)
        with self._lock:
            # One read transaction, so jobs and their deliveries come from the same snapshot.
            self._db.execute("BEGIN")
            try:
                if not self._read("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
                    raise self._unknown_run(run_id)
                rows = self._read(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY row_id", (run_id,)
                )
                deliveries = self._deliveries(
                    "SELECT d.* FROM deliveries d JOIN jobs j ON j.row_id = d.row_id "
                    "WHERE j.run_id = ? ORDER BY d.rowid",
                    (run_id,),
                )
            finally:
                self._db.execute("COMMIT")
        return [self._job_record(row, deliveries.get(row["row_id"], {})) for row in rows]

    def job(self, row_id: int) -> JobRecord:
        """The job at ``row_id``; raises :class:`UsageError` when there is none."""
        found = self._jobs_where("row_id = ?", (int(row_id),))
        if found is None:
            raise UsageError(f"no job row {row_id} in {self.path}")
        return found

    def find_job(self, job_id: str) -> JobRecord | None:
        """The journal's job with Opus job id ``job_id`` (the newest if recorded twice)."""
        return self._jobs_where("job_id = ?", (_text(job_id),))

    def status_history(self, row_id: int) -> list[tuple[str, str]]:
        """Every status change of the job as ``(iso time, status)``, oldest first."""
        rows = self._read(
            "SELECT at, status FROM status_history WHERE row_id = ? ORDER BY seq", (int(row_id),)
        )
        return [(row["at"], row["status"]) for row in rows]

    def _jobs_where(self, where: str, params: tuple[Any, ...]) -> JobRecord | None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._read(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY row_id DESC LIMIT 1",
                    params,
                )
                if not rows:
                    return None
                row_id = rows[0]["row_id"]
                deliveries = self._deliveries(
                    "SELECT * FROM deliveries WHERE row_id = ? ORDER BY rowid", (row_id,)
                )
            finally:
                self._db.execute("COMMIT")
        return self._job_record(rows[0], deliveries.get(row_id, {}))

    def _deliveries(
        self, sql: str, params: tuple[Any, ...]
    ) -> dict[int, dict[str, dict[str, Any]]]:
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for row in self._read(sql, params):
            out.setdefault(row["row_id"], {})[row["target"]] = {
                "ok": bool(row["ok"]),
                "error": row["error"],
                "at": row["at"],
            }
        return out

    @staticmethod
    def _job_record(row: sqlite3.Row, deliveries: dict[str, dict[str, Any]]) -> JobRecord:
        return JobRecord(
            row_id=row["row_id"],
            run_id=row["run_id"],
            plan_key=row["plan_key"],
            spec_path=row["spec_path"],
            spec_digest=row["spec_digest"],
            spec_name=row["spec_name"],
            workflow_key=row["workflow_key"],
            title=row["title"],
            phase=Phase(row["phase"]),
            job_id=row["job_id"],
            payload=_load(row["payload"]),
            plan=_load(row["plan"]),
            status=row["status"],
            result=_load(row["result"]),
            error=row["error"],
            deliveries=deliveries,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    # -- callbacks ----------------------------------------------------------------------

    def derived_key(self, purpose: str, run_id: str) -> bytes:
        """A key for ``purpose`` in run ``run_id``, derived from the key beside the journal:
        every process that can read the journal's folder derives the same one, nobody else."""
        message = "\0".join((purpose, run_id)).encode("utf-8")
        return hmac.new(self._secrets_key(create=True), message, hashlib.sha256).digest()

    def add_callback(self, row_id: int, digest: str) -> None:
        """Keep the digest of the token in the job's callbackUrl (before execute sends it)."""
        with self._write() as db:
            self._require_job(db, row_id)
            db.execute(
                "INSERT OR REPLACE INTO callbacks (digest, row_id, run_id)"
                " SELECT ?, row_id, run_id FROM jobs WHERE row_id = ?",
                (_text(digest), int(row_id)),
            )

    def callback_target(self, digest: str) -> tuple[str, int, str, str] | None:
        """``(run_id, row_id, plan_key, job_id)`` of the job whose token has ``digest``, or None."""
        rows = self._read(
            "SELECT c.run_id, c.row_id, j.plan_key, j.job_id FROM callbacks c"
            " JOIN jobs j ON j.row_id = c.row_id WHERE c.digest = ?",
            (_text(digest),),
        )
        if not rows or rows[0]["job_id"] is None:
            return None
        row = rows[0]
        return row["run_id"], row["row_id"], row["plan_key"], row["job_id"]

    def record_callback(self, run_id: str, row_id: int, shape: Any) -> int:
        """List a callback accepted for the job at ``row_id``; its sequence number."""
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO callback_calls (run_id, row_id, at, shape) VALUES (?, ?, ?, ?)",
                (_text(run_id), int(row_id), _now(), _dump(shape)),
            )
            seq = cur.lastrowid
        assert seq is not None
        return seq

    def callbacks_since(self, run_id: str, seq: int) -> list[tuple[int, int]]:
        """``(seq, row_id)`` of the callbacks accepted for run ``run_id`` after ``seq``, in order."""
        rows = self._read(
            "SELECT seq, row_id FROM callback_calls WHERE run_id = ? AND seq > ? ORDER BY seq",
            (_text(run_id), int(seq)),
        )
        return [(row["seq"], row["row_id"]) for row in rows]

    # -- history: read-only queries of opus-run runs, status RUN and rerun --------------------

    def has_run(self, run_id: str) -> bool:
        """Whether the journal holds run ``run_id`` (``status ID`` tells a run from a job by it)."""
        return bool(self._read("SELECT 1 FROM runs WHERE run_id = ?", (_text(run_id),)))

    def status_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """For each of ``run_ids``, how many of its jobs are in each status; a job that has no
        status yet (never sent) counts under its phase, upper-case (``PLANNED``, ``INITIATED``)."""
        ids = [_text(r) for r in run_ids]
        counts: dict[str, dict[str, int]] = {run_id: {} for run_id in ids}
        if not ids:
            return counts
        marks = ", ".join("?" for _ in ids)
        rows = self._read(
            f"SELECT run_id, COALESCE(status, UPPER(phase)) AS shown, COUNT(*) AS n FROM jobs"
            f" WHERE run_id IN ({marks}) GROUP BY run_id, shown ORDER BY MIN(row_id)",
            tuple(ids),
        )
        for row in rows:
            counts[row["run_id"]][row["shown"]] = row["n"]
        return counts

    def is_running(self, run_id: str) -> bool:
        """Whether a live process owns run ``run_id`` now (it is being run or resumed)."""
        owner = self.owner(run_id)
        return owner is not None and _owner_alive(owner["host"], owner["pid"], owner["heartbeat"])
