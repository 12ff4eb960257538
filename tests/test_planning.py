"""Planning: matrix and foreach expansion, plan keys, filters and shards."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from opus_runner.errors import SpecError, TemplateError, UsageError
from opus_runner.planning import PlanFilter, Planner, parse_assignments, parse_shard, shard_of
from opus_runner.spec import load_spec
from opus_runner.templating import Templater


def write_spec(tmp_path: Path, body: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: opus-runner/v1
            kind: Job
            metadata:
              name: report
              title: "Report {{ vars.month }}"
            workflow:
              id: 5a0d7e3c-8b21-4c6f-9e4a-2f7b1d0c8e93
            vars:
              month: "2026-11"
            """
        )
        + textwrap.dedent(body)
    )
    return path


def planner(**kw) -> Planner:
    return Planner(Templater(environ={"USER_REGION": "eu"}), **kw)


def plans(path: Path, plan_filter: PlanFilter | None = None, **kw):
    return list(planner(**kw).plans([load_spec(path)], plan_filter))


def test_single_job(tmp_path: Path) -> None:
    [plan] = plans(write_spec(tmp_path, "inputs:\n  Region: '{{ env.USER_REGION }}'\n  Month: '{{ vars.month }}'\n"))
    assert plan.key == "report"
    assert plan.title == "Report 2026-11"
    assert plan.inputs == {"Region": "eu", "Month": "2026-11"}
    assert plan.outputs == [{"type": "stdout"}]
    assert plan.wait.enabled and plan.wait.poll_interval == 2.0


def test_var_overrides_win_over_spec_defaults(tmp_path: Path) -> None:
    [plan] = plans(write_spec(tmp_path, "inputs:\n  Month: '{{ vars.month }}'\n"), var_overrides={"month": "2027-01"})
    assert plan.inputs["Month"] == "2027-01" and plan.title == "Report 2027-01"


def test_matrix_is_a_cartesian_product_with_stable_keys(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """\
        matrix:
          region: [eu, us]
          month: ["2026-10", "2026-11"]
        inputs:
          Region: "{{ matrix.region }}"
          Month: "{{ matrix.month }}"
        """,
    )
    got = plans(path)
    assert [p.key for p in got] == [
        "report[region=eu,month=2026-10]",
        "report[region=eu,month=2026-11]",
        "report[region=us,month=2026-10]",
        "report[region=us,month=2026-11]",
    ]
    assert got[2].inputs == {"Region": "us", "Month": "2026-10"}
    assert [p.key for p in plans(path)] == [p.key for p in got]  # deterministic


def test_foreach_csv_with_quoting_and_empty_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text('customer,region\n"ACME, Inc.",eu\n,\n\n"Say ""hi""",us\n')
    path = write_spec(tmp_path, "foreach: {file: rows.csv, key: customer}\ninputs:\n  Customer: '{{ row.customer }}'\n  Region: '{{ row.region }}'\n")
    got = plans(path)
    assert [p.key for p in got] == ["report#ACME, Inc.", 'report#Say "hi"']
    assert [p.row_number for p in got] == [1, 2]
    assert got[0].inputs == {"Customer": "ACME, Inc.", "Region": "eu"}
    assert got[1].inputs["Customer"] == 'Say "hi"'


def test_foreach_header_missing_a_templated_column_names_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("customer\nACME\n")
    path = write_spec(tmp_path, "foreach: {file: rows.csv}\ninputs:\n  Region: '{{ row.region }}'\n")
    with pytest.raises(TemplateError) as err:
        plans(path)
    text = str(err.value)
    assert "inputs.Region" in text and "row has no key 'region'" in text and "foreach row 1" in text
    assert "customer" in text  # the columns it does have


def test_foreach_json_yaml_and_inline_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text('[{"customer": "a"}, {"customer": "b"}]')
    (tmp_path / "rows.yaml").write_text("- customer: c\n")
    for source in ("{file: rows.json}", "{file: rows.yaml}", "{rows: [{customer: d}]}"):
        got = plans(write_spec(tmp_path, f"foreach: {source}\ninputs:\n  Customer: '{{{{ row.customer }}}}'\n"))
        assert got and all(p.inputs["Customer"] in "abcd" for p in got)


def test_foreach_problems(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="foreach file 'missing.csv' does not exist"):
        plans(write_spec(tmp_path, "foreach: {file: missing.csv}\n"))
    (tmp_path / "rows.json").write_text('{"a": 1}')
    with pytest.raises(SpecError, match="must hold a list of rows"):
        plans(write_spec(tmp_path, "foreach: {file: rows.json}\n"))
    (tmp_path / "rows2.json").write_text("[1, 2]")
    with pytest.raises(SpecError, match="row 1 must be a mapping"):
        plans(write_spec(tmp_path, "foreach: {file: rows2.json}\n"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    with pytest.raises(SpecError, match="more cells than the header"):
        plans(write_spec(tmp_path, "foreach: {file: bad.csv}\n"))


def test_matrix_and_foreach_combine(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("customer\na\nb\n")
    path = write_spec(tmp_path, "matrix: {region: [eu, us]}\nforeach: {file: rows.csv, key: customer}\n")
    assert [p.key for p in plans(path)] == ["report[region=eu]#a", "report[region=eu]#b", "report[region=us]#a", "report[region=us]#b"]


def test_foreach_keys_are_stable_identities_not_positions(tmp_path: Path) -> None:
    # Without a key column a row is named by a digest of its content: adding a row at the top
    # changes no other row's key (resume and shards depend on it).
    (tmp_path / "rows.csv").write_text("customer,amount\na,1\nb,2\n")
    path = write_spec(tmp_path, "foreach: {file: rows.csv}\n")
    before = {p.row["customer"]: p.key for p in plans(path)}
    (tmp_path / "rows.csv").write_text("customer,amount\nz,9\na,1\nb,2\n")
    after = {p.row["customer"]: p.key for p in plans(path)}
    assert after["a"] == before["a"] and after["b"] == before["b"] and len(set(after.values())) == 3
    assert all(len(k.split("#")[1]) == 12 for k in after.values())
    # A row whose content changed is another job.
    (tmp_path / "rows.csv").write_text("customer,amount\na,5\nb,2\n")
    assert {p.row["customer"]: p.key for p in plans(path)}["a"] != before["a"]


def test_identical_rows_or_repeated_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("customer,amount\na,1\nb,2\na,1\n")
    with pytest.raises(SpecError, match=r"rows 1 and 3 of rows.csv are identical, so their jobs could not be told apart"):
        plans(write_spec(tmp_path, "foreach: {file: rows.csv}\n"))
    (tmp_path / "keyed.csv").write_text("id,amount\n7,1\n8,2\n7,3\n")
    with pytest.raises(SpecError, match=r"rows 1 and 3 of keyed.csv have the same value in the key column 'id'"):
        plans(write_spec(tmp_path, "foreach: {file: keyed.csv, key: id}\n"))
    (tmp_path / "gap.csv").write_text("id,amount\n7,1\n,2\n")
    with pytest.raises(SpecError, match=r"foreach row 2 has no value in its key column 'id'"):
        plans(write_spec(tmp_path, "foreach: {file: gap.csv, key: id}\n"))


def test_only_limit_and_shards(tmp_path: Path) -> None:
    rows = "".join(f"c{i},{'eu' if i % 2 else 'us'}\n" for i in range(1, 41))
    (tmp_path / "rows.csv").write_text("customer,region\n" + rows)
    path = write_spec(tmp_path, "foreach: {file: rows.csv}\n")
    everything = [p.key for p in plans(path)]
    assert len(everything) == 40
    only_eu = plans(path, PlanFilter(only=(("region", "eu"),)))
    assert len(only_eu) == 20 and all(p.row["region"] == "eu" for p in only_eu)
    assert [p.key for p in plans(path, PlanFilter(limit=3))] == everything[:3]
    shards = [[p.key for p in plans(path, PlanFilter(shard=(k, 3)))] for k in (1, 2, 3)]
    union = [key for shard in shards for key in shard]
    assert sorted(union) == sorted(everything)  # together the whole plan
    assert len(set(union)) == len(union)  # disjoint
    assert all(shards)  # none empty for 40 jobs over 3 shards
    assert all(shard_of(k, 3) == i + 1 for i, shard in enumerate(shards) for k in shard)


def test_wait_settings_and_timeout_override(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "wait: {timeout: 5m, poll_interval: 1s, max_interval: 10s}\n")
    [plan] = plans(path)
    assert (plan.wait.timeout, plan.wait.poll_interval, plan.wait.max_interval) == (300, 1, 10)
    [plan] = plans(path, timeout=7, no_wait=True)
    assert plan.wait.timeout == 7 and not plan.wait.enabled


def test_callback_must_be_https(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="callback.url must be an https URL"):
        plans(write_spec(tmp_path, "callback: {url: 'http://example.com/cb'}\n"))


def test_parse_helpers() -> None:
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/5", "6/5", "x", "1/0", "1/2/3"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)
    assert parse_assignments(["a=1", "b=x=y", "c="], "--var") == [("a", "1"), ("b", "x=y"), ("c", "")]
    with pytest.raises(UsageError, match="--var expects KEY=VALUE, found 'month'"):
        parse_assignments(["month"], "--var")
