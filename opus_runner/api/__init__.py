"""The Opus HTTP client, as a package; ``opus_runner.client`` re-exports its public names.

    api/
      client.py     OpusClient: one thin method per endpoint (build the request, read the answer)
      dialects.py   what differs between the v0 Jobs API and the v1 Case API: routes, bodies, reads
      camel.py      v1's camelCase answers read into the v0 field names
      transport.py  one exchange (key, deadline, size cap, traces) and the one retry loop
      execute.py    the no-resend rule of POST /job/execute, asked by that loop
      answers.py    every shape an answer comes in: bodies, errors, ids, statuses, results

Everything a caller can rely on:

- the service key travels only in the ``x-service-key`` header of API calls to the base URL,
  only over https (or plain http to a loopback host), never to a presigned storage URL, and
  never into a log line, repr or exception;
- transient failures (connect errors, timeouts, dropped connections, 429/500/502/503/504) are
  retried with exponential backoff and full jitter, honouring ``Retry-After``; timeouts only
  within the policy's ``budget``, so a server that does not answer is reported after about
  ``budget`` plus one timeout, not after every attempt has waited its full timeout;
- every answer must arrive whole within ``deadline`` (a server sending one byte at a time never
  trips a per-read timeout) and be at most ``max_answer_bytes`` once decompressed; JSON nested
  too deeply to parse is refused, and ``NaN``/``Infinity`` are read as null (:mod:`opus_runner.jsontext`);
- execute is never resent once it may have reached the server: its outcome is read back from
  the job's status instead;
- both generations of the API (``api="v0"``, the default, or ``"v1"``) give the same models:
  nothing above the client knows which one ran;
- every error the server can answer with becomes one :mod:`opus_runner.errors` exception whose
  message quotes the server's own words.

The CLI imports this package lazily, so httpx is imported at the top of its modules.
"""

from __future__ import annotations

from ..errors import AnswerTooLarge, SlowAnswerError
from .answers import (
    AuditProgress,
    ExecuteOutcome,
    ResultsData,
    error_from_response,
    job_id_of,
    parse_results,
    server_message,
)
from .client import ACCESS_SCOPES, DEFAULT_ACCESS_SCOPE, DOWNLOAD_URL_EXPIRY, OpusClient
from .transport import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    NO_KEY_MESSAGE,
    TRACE_BODY_LIMIT,
    AnswerTooSlow,
    RetryNotice,
    RetryPolicy,
)

__all__ = [
    "ACCESS_SCOPES",
    "DEFAULT_ACCESS_SCOPE",
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "DOWNLOAD_URL_EXPIRY",
    "MAX_ANSWER_BYTES",
    "NO_KEY_MESSAGE",
    "TRACE_BODY_LIMIT",
    "AnswerTooLarge",
    "AnswerTooSlow",
    "AuditProgress",
    "ExecuteOutcome",
    "OpusClient",
    "ResultsData",
    "RetryNotice",
    "RetryPolicy",
    "SlowAnswerError",
    "error_from_response",
    "job_id_of",
    "parse_results",
    "server_message",
]
