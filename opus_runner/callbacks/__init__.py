"""Callbacks: what Opus POSTs to a job's ``callbackUrl`` when the job ends, heard as a wake-up.

opus-api.md section 7: the body, headers, signature and retries of a callback are documented
nowhere. So a callback is authenticated by an unguessable per-job token in its URL
(:mod:`.tokens`), answered 2xx at once, and trusted for nothing but "read this job's status now"
(:mod:`.receiver`); the runner then reads status and results from the API. A forged, duplicated,
late or reordered callback costs at most one status read and changes nothing.
"""

from .tokens import CALLBACK_PATH, ReceiverSettings, callback_url, job_token, parse_listen, public_url_problem, token_digest

__all__ = [
    "CALLBACK_PATH",
    "ReceiverSettings",
    "callback_url",
    "job_token",
    "parse_listen",
    "public_url_problem",
    "token_digest",
]
