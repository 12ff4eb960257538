"""The same batch through the third-party ``opus-aaico`` SDK's async ``workflows.run``.

Not a project dependency: run it with an interpreter that has ``opus-aaico`` installed (see
bench/README.md). Like the floor, it reads the workflow's inputs once (one ``GET
/workflow/{id}``; the SDK's own ``workflows.get`` reads the v2 object instead), builds each
row's payload, and runs ``workflows.run`` per row under a semaphore of ``--concurrency`` on one
``AsyncOpusClient``. ``workflows.run`` polls at a fixed ``poll_interval`` and also reads the
job's audit after its results.

    OPUS_BASE_URL=... OPUS_API_KEY=... python bench/aaico_client.py --rows rows.csv --workflow UUID

Prints one JSON line ``{"jobs": N, "completed": N, "statuses": {...}}``; exits 1 unless every
job completed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from collections import Counter
from typing import Any

import httpx
from opus_aaico import AsyncOpusClient

from _wire import workflow_inputs

_COERCE = {"str": str, "float": float}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = os.environ["OPUS_BASE_URL"]
    key = os.environ["OPUS_API_KEY"]
    with open(args.rows, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    async with httpx.AsyncClient(base_url=base_url, headers={"x-service-key": key}) as http:
        response = await http.get(f"/workflow/{args.workflow}")
        response.raise_for_status()
        inputs = workflow_inputs(response.json())
    semaphore = asyncio.Semaphore(args.concurrency)
    async with AsyncOpusClient(api_key=key, base_url=base_url) as client:

        async def job(row: dict[str, str]) -> str:
            payload = {
                var: {"value": _COERCE[f["type"]](row[f["display_name"]]), "type": f["type"], "displayName": f["display_name"]}
                for var, f in inputs.items()
            }
            async with semaphore:
                result = await client.workflows.run(
                    args.workflow,
                    payload,
                    title=f"Bench {row['Customer']}",
                    poll_interval=args.poll_interval,
                    timeout=args.timeout,
                )
            return str(result.status)

        statuses = Counter(await asyncio.gather(*(job(row) for row in rows)))
    return {"jobs": len(rows), "completed": statuses["COMPLETED"], "statuses": dict(statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--workflow", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    print(json.dumps(summary))
    return 0 if summary["completed"] == summary["jobs"] else 1


if __name__ == "__main__":
    sys.exit(main())
