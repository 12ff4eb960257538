"""The public import path of the Opus HTTP client: ``from opus_runner.client import OpusClient``.

The client lives in the :mod:`opus_runner.api` package (endpoints, transport and retry loop,
execute's no-resend rule, answer parsing); this module only re-exports its public names, so
code written against ``opus_runner.client`` keeps working. Code inside opus-runner imports
from :mod:`opus_runner.api`.
"""

from __future__ import annotations

from .api import (
    ACCESS_SCOPES,
    DEFAULT_ACCESS_SCOPE,
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    DOWNLOAD_URL_EXPIRY,
    MAX_ANSWER_BYTES,
    NO_KEY_MESSAGE,
    TRACE_BODY_LIMIT,
    AnswerTooLarge,
    AnswerTooSlow,
    AuditProgress,
    ExecuteOutcome,
    OpusClient,
    ResultsData,
    RetryNotice,
    RetryPolicy,
    SlowAnswerError,
    __all__,
    error_from_response,
    job_id_of,
    parse_results,
    server_message,
)
