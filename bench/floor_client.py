"""The floor: the least a client can do to run one job per CSV row, hand-written over httpx.

It does the work opus-runner does for a batch with an ``ndjson`` output, and nothing else:
``GET /workflow/{id}`` once, then per job ``POST /job/initiate``, ``POST /job/execute``, ``GET
/job/{id}/status`` until terminal on the same poll schedule (first poll at once, then
``interval * uniform(0.8, 1.0)``, the interval growing by ``--backoff`` up to
``--max-interval``), ``GET /job/{id}/results``, and one JSON line per job appended to
``--ndjson`` with the fields the runner's ndjson output writes (each line one write, then
fsync, as the runner's output does). One ``httpx.AsyncClient`` (with ``--lean-pool``, over opus-runner's
connection pool), a semaphore of ``--concurrency``. No journal, no templating, no validation.

It retries transport errors (connect errors, resets, a server closing the connection) a few
times with a short backoff, so a reset cannot abort a benchmark; ``POST /job/execute`` only
after a connect error, when the request cannot have arrived: an execute is never sent twice.

    OPUS_BASE_URL=... OPUS_SERVICE_KEY=... python bench/floor_client.py --rows rows.csv --workflow ID

Prints one JSON line: ``{"jobs": N, "completed": N, "statuses": {...}}``; exits 1 unless every
job completed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import httpx

from _wire import CALLBACK_URL, workflow_inputs

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# The floor sends what the workflow's schema says, coerced the simplest way.
_COERCE = {"str": str, "float": float}
#: Errors after which the request may be sent again (it may have arrived, except a connect error).
TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
ATTEMPTS = 4
BACKOFF = 0.1  # seconds before the 2nd attempt, doubled each time


def build_payload(row: dict[str, str], inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{variable_name: {value, type, displayName}}`` from a row keyed by display name."""
    payload = {}
    for var, field in inputs.items():
        name = field["display_name"]
        payload[var] = {"value": _COERCE[field["type"]](row[name]), "type": field["type"], "displayName": name}
    return payload


async def call(http: httpx.AsyncClient, method: str, url: str, *, resend: bool = True, **kwargs: Any) -> Any:
    """One API call's JSON answer, retrying transport errors (connect errors only unless ``resend``)."""
    retryable = TRANSPORT_ERRORS if resend else httpx.ConnectError
    for attempt in range(ATTEMPTS):
        try:
            response = await http.request(method, url, **kwargs)
        except retryable:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(BACKOFF * 2**attempt)
            continue
        response.raise_for_status()
        return response.json()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_line(fd: int, record: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())
    os.fsync(fd)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = os.environ["OPUS_BASE_URL"]
    key = os.environ["OPUS_SERVICE_KEY"]
    with open(args.rows, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = os.open(args.ndjson, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    semaphore = asyncio.Semaphore(args.concurrency)
    transport = None
    if args.lean_pool:
        # opus-runner's own connection pool (opus_runner/api/pool.py), for the comparison that
        # shows how much of the runner's lead is that pool alone.
        from opus_runner.api.pool import LeanTransport

        transport = LeanTransport(limits=limits)
    client = httpx.AsyncClient(base_url=base_url, headers={"x-service-key": key}, limits=limits, timeout=30.0, transport=transport)
    async with client as http:
        inputs = workflow_inputs(await call(http, "GET", f"/workflow/{args.workflow}"))

        async def job(n: int, row: dict[str, str]) -> str:
            title = f"Bench {row['Customer']}"
            async with semaphore:
                body = {"workflowId": args.workflow, "title": title, "description": ""}
                job_id = (await call(http, "POST", "/job/initiate", json=body))["jobExecutionId"]
                body = {"jobExecutionId": job_id, "jobPayloadSchemaInstance": build_payload(row, inputs), "callbackUrl": CALLBACK_URL}
                await call(http, "POST", "/job/execute", json=body, resend=False)
                deadline = time.monotonic() + args.timeout
                interval = args.poll_interval
                while True:
                    answer = await call(http, "GET", f"/job/{job_id}/status")
                    status = str(answer["status"]).upper().replace(" ", "_")
                    if status in TERMINAL:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return "TIMED_OUT"
                    await asyncio.sleep(min(remaining, interval * random.uniform(0.8, 1.0)))
                    interval = min(args.max_interval, interval * args.backoff)
                outputs = {}
                if status == "COMPLETED":
                    results = await call(http, "GET", f"/job/{job_id}/results")
                    outputs = {name: e.get("value") for name, e in results["jobResultsPayloadSchema"].items()}
                record = {
                    "job_id": job_id, "status": status, "spec_name": args.name, "plan_key": f"{args.name}#{n}",
                    "title": title, "url": None, "started_at": None, "finished_at": now_iso(),
                    "error": None if status == "COMPLETED" else f"job {job_id} ended {status}",
                    "final": True, "outputs": outputs,
                }  # fmt: skip
                write_line(out, record)
                return status

        try:
            statuses = Counter(await asyncio.gather(*(job(n, row) for n, row in enumerate(rows))))
        finally:
            os.close(out)
    return {"jobs": len(rows), "completed": statuses["COMPLETED"], "statuses": dict(statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="CSV file, one job per row (columns: input display names)")
    parser.add_argument("--workflow", required=True, help="workflow id")
    parser.add_argument("--ndjson", required=True, help="file to append one result line per job to")
    parser.add_argument("--name", default="bench", help="spec_name written in each result line")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="first interval between status calls (s)")
    parser.add_argument("--max-interval", type=float, default=30.0, help="longest interval (s)")
    parser.add_argument("--lean-pool", action="store_true", help="use opus-runner's connection pool instead of httpcore's")
    parser.add_argument("--backoff", type=float, default=1.3, help="interval growth per poll (1: a fixed interval)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this long (s)")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    print(json.dumps(summary))
    return 0 if summary["completed"] == summary["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
