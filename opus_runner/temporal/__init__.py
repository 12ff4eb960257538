"""Runs on Temporal workers (the ``temporal`` extra): ``opus-run submit``, ``worker``, ``cancel``,
and ``status`` / ``wait --engine temporal`` (docs/scale-out.md).

- ``definition``: what a run is made of as plain data, shared by the submitter, the workers and
  the workflow (standard library only: the workflow imports it in Temporal's sandbox);
- ``chunk``: the chunk workflow, which only decides what comes next;
- ``activities``: the steps (initiate, execute, check), done by the run engine's own parts;
- ``runs``: submitting, and a :class:`~opus_runner.temporal.runs.RunHandle` to follow a run;
- ``worker``: the worker; ``callbacks``: callbacks as signals; ``devserver``: a dev server on
  loopback for the tests and the benchmark.

Nothing here is imported by the core CLI until one of these commands runs.
"""
