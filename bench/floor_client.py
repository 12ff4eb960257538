"""The floor: the least a client can do to run one job per CSV row, hand-written over httpx.

It makes exactly the API calls opus-runner makes for a batch, and nothing else: ``GET
/workflow/{id}`` once, then per job ``POST /job/initiate``, ``POST /job/execute``, ``GET
/job/{id}/status`` until terminal on the same poll schedule (first poll at once, then
``interval * uniform(0.8, 1.0)``, the interval growing by ``--backoff`` up to
``--max-interval``) and ``GET /job/{id}/results``. One ``httpx.AsyncClient``, a semaphore of
``--concurrency``. No journal, no templating, no validation, no retries: that is the point.

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
from typing import Any

import httpx

from _wire import CALLBACK_URL, workflow_inputs

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
# The floor sends what the workflow's schema says, coerced the simplest way.
_COERCE = {"str": str, "float": float}


def build_payload(row: dict[str, str], inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{variable_name: {value, type, displayName}}`` from a row keyed by display name."""
    payload = {}
    for var, field in inputs.items():
        name = field["display_name"]
        payload[var] = {"value": _COERCE[field["type"]](row[name]), "type": field["type"], "displayName": name}
    return payload


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = os.environ["OPUS_BASE_URL"]
    key = os.environ["OPUS_SERVICE_KEY"]
    with open(args.rows, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    semaphore = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers={"x-service-key": key}, limits=limits, timeout=30.0) as http:
        response = await http.get(f"/workflow/{args.workflow}")
        response.raise_for_status()
        inputs = workflow_inputs(response.json())

        async def job(row: dict[str, str]) -> str:
            async with semaphore:
                response = await http.post(
                    "/job/initiate",
                    json={"workflowId": args.workflow, "title": f"Bench {row['Customer']}", "description": ""},
                )
                response.raise_for_status()
                job_id = response.json()["jobExecutionId"]
                response = await http.post(
                    "/job/execute",
                    json={
                        "jobExecutionId": job_id,
                        "jobPayloadSchemaInstance": build_payload(row, inputs),
                        "callbackUrl": CALLBACK_URL,
                    },
                )
                response.raise_for_status()
                deadline = time.monotonic() + args.timeout
                interval = args.poll_interval
                while True:
                    response = await http.get(f"/job/{job_id}/status")
                    response.raise_for_status()
                    status = str(response.json()["status"]).upper().replace(" ", "_")
                    if status in TERMINAL:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return "TIMED_OUT"
                    await asyncio.sleep(min(remaining, interval * random.uniform(0.8, 1.0)))
                    interval = min(args.max_interval, interval * args.backoff)
                if status == "COMPLETED":
                    response = await http.get(f"/job/{job_id}/results")
                    response.raise_for_status()
                    response.json()
                return status

        statuses = Counter(await asyncio.gather(*(job(row) for row in rows)))
    return {"jobs": len(rows), "completed": statuses["COMPLETED"], "statuses": dict(statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="CSV file, one job per row (columns: input display names)")
    parser.add_argument("--workflow", required=True, help="workflow id")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="first interval between status calls (s)")
    parser.add_argument("--max-interval", type=float, default=30.0, help="longest interval (s)")
    parser.add_argument("--backoff", type=float, default=1.6, help="interval growth per poll (1: a fixed interval)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up waiting after this long (s)")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    print(json.dumps(summary))
    return 0 if summary["completed"] == summary["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
