"""The plugin host: loading from the four sources, hook calls, registration and config checks."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WF

import opus_runner.builtins
from opus_runner import redact
from opus_runner.errors import PluginError
from opus_runner.models import Context, InputField
from opus_runner.plugins import (
    DEFAULT_NOTIFY_ON,
    Handler,
    PluginHost,
    call_handler,
    hook_names,
    make_plugin_host,
    notify_events,
)

REPO = Path(__file__).resolve().parent.parent
OWN_BUILTINS = ("opus_runner.builtins.outputs", "opus_runner.builtins.notifiers")


def plugin_source(body: str) -> str:
    return "from opus_runner import hookimpl\n\n" + textwrap.dedent(body)


def tagging_coercer(tag: str) -> str:
    """A plugin that answers for field names ``tag`` and ``any`` with its tag, and passes otherwise."""
    return plugin_source(
        f"""
        @hookimpl
        def opus_coerce_value(field, value, ctx):
            if field.variable_name in ({tag!r}, "any"):
                return {tag!r}
            return None
        """
    )


class ImportArea:
    """A folder on sys.path for throw-away modules and fake distributions, cleaned up after."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.root.mkdir()
        self.names: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def module(self, body: str, prefix: str = "tmp_plugin") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        (self.root / f"{name}.py").write_text(body)
        self.names.append(name)
        return name

    def distribution(self, dist: str, version: str, ep_name: str, body: str) -> str:
        module = self.module(body, prefix=f"{dist}_plugin")
        info = self.root / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[opus_runner]\n{ep_name} = {module}\n")
        return module

    def cleanup(self) -> None:
        for name in self.names:
            sys.modules.pop(name, None)


@pytest.fixture
def area(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ImportArea]:
    found = ImportArea(tmp_path / "importable", monkeypatch)
    yield found
    found.cleanup()


@pytest.fixture
def own_builtins(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Only this helper's built-ins, so these tests do not depend on coerce/upload/schema."""
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", OWN_BUILTINS)
    return OWN_BUILTINS


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    return folder


def ctx_for(tmp_path: Path) -> Context:
    return Context(spec=None, spec_path=tmp_path / "spec.yaml", spec_dir=tmp_path, log=logging.getLogger("t"))


def field(name: str) -> InputField:
    return InputField(variable_name=name, display_name=name.title(), type="str")


# -- load order and firstresult chaining ------------------------------------------------------


def test_load_order_across_all_four_sources(
    area: ImportArea, plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = area.module(
        plugin_source(
            """
            @hookimpl
            def opus_coerce_value(field, value, ctx):
                return "builtin"
            """
        )
    )
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", (*OWN_BUILTINS, builtin))
    ep_module = area.distribution("fakepkg", "1.2.0", "fakepkg", tagging_coercer("entrypoint"))
    (plugins_dir / "local_one.py").write_text(tagging_coercer("local"))
    option = area.module(tagging_coercer("option"))

    host = make_plugin_host(plugins_dir=plugins_dir, modules=[option])

    infos = host.describe()
    assert [i.origin for i in infos] == ["builtin", "builtin", "builtin", "entrypoint", "local", "option"]
    assert [i.name for i in infos] == [*OWN_BUILTINS, builtin, "fakepkg", "local_one", option]
    assert infos[3].source == f"fakepkg 1.2.0 (entry point {ep_module})"
    assert infos[4].source == str((plugins_dir / "local_one.py").resolve())
    assert infos[5].source == option

    ctx = ctx_for(tmp_path)

    def coerce(name: str) -> Any:
        return asyncio.run(host.first("opus_coerce_value", field=field(name), value="v", ctx=ctx))

    # Loaded last, asked first: a field every plugin wants goes to the --plugin module.
    assert coerce("any") == "option"
    # Each plugin takes its own field and passes the others down the chain...
    assert coerce("local") == "local"
    assert coerce("entrypoint") == "entrypoint"
    # ...and the built-in, loaded first, only sees what nobody else took.
    assert coerce("unclaimed") == "builtin"


def test_the_builtin_tuple_names_every_builtin_and_all_of_them_load() -> None:
    assert opus_runner.builtins.BUILTIN_PLUGINS == (
        "opus_runner.builtins.coerce",
        "opus_runner.builtins.upload",
        "opus_runner.builtins.schema",
        "opus_runner.builtins.outputs",
        "opus_runner.builtins.notifiers",
        "opus_runner.builtins.junit",
    )
    host = make_plugin_host(entrypoints=False)
    infos = host.describe()
    assert [(i.name, i.origin) for i in infos] == [(n, "builtin") for n in opus_runner.builtins.BUILTIN_PLUGINS]
    assert {"stdout", "json", "ndjson", "download", "junit"} <= set(host.outputs)
    assert {"webhook", "log"} <= set(host.notifiers)


def test_a_missing_builtin_module_is_a_plugin_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", ("opus_runner.builtins.nope",))
    with pytest.raises(PluginError) as info:
        make_plugin_host(entrypoints=False)
    assert "opus_runner.builtins.nope" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)


# -- calling hooks ----------------------------------------------------------------------------


ASYNC_PLUGIN = plugin_source(
    """
    import asyncio

    SEEN = []

    @hookimpl
    async def opus_coerce_value(field, value, ctx):
        await asyncio.sleep(0)
        return f"async:{value}" if field.variable_name == "mine" else None

    @hookimpl
    async def opus_job_event(event, ctx):
        await asyncio.sleep(0)
        SEEN.append(("async", event))
        return "async-observer"
    """
)
SYNC_PLUGIN = plugin_source(
    """
    SEEN = []

    @hookimpl
    def opus_job_event(event, ctx):
        SEEN.append(("sync", event))
        return "sync-observer"
    """
)


def test_async_impls_are_awaited_by_first_and_each(plugins_dir: Path, tmp_path: Path, own_builtins: Any) -> None:
    (plugins_dir / "a_async.py").write_text(ASYNC_PLUGIN)
    (plugins_dir / "b_sync.py").write_text(SYNC_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    ctx = ctx_for(tmp_path)

    assert asyncio.run(host.first("opus_coerce_value", field=field("mine"), value=3, ctx=ctx)) == "async:3"
    assert asyncio.run(host.first("opus_coerce_value", field=field("other"), value=3, ctx=ctx)) is None
    # each: every implementation, in call order (b_sync was loaded after a_async, so first).
    assert asyncio.run(host.each("opus_job_event", event="e1", ctx=ctx)) == ["sync-observer", "async-observer"]
    assert sys.modules["opus_runner_local.a_async"].SEEN == [("async", "e1")]


THREAD_PLUGIN = plugin_source(
    """
    import threading

    @hookimpl
    def opus_upload_file(field, source, ctx):
        return threading.get_ident()
    """
)


def test_sync_third_party_impls_are_offloaded_and_builtins_run_inline(
    area: ImportArea, plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtin = area.module(
        plugin_source(
            """
            import threading

            @hookimpl
            def opus_workflow_schema(workflow_ref, ctx):
                return threading.get_ident()
            """
        )
    )
    monkeypatch.setattr(opus_runner.builtins, "BUILTIN_PLUGINS", (*OWN_BUILTINS, builtin))
    (plugins_dir / "threads.py").write_text(THREAD_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    ctx = ctx_for(tmp_path)
    main = threading.get_ident()

    async def both() -> tuple[int, int, int]:
        offloaded = await host.first("opus_upload_file", offload=True, field=field("f"), source="x", ctx=ctx)
        inline = await host.first("opus_upload_file", field=field("f"), source="x", ctx=ctx)
        builtin_id = await host.first("opus_workflow_schema", offload=True, workflow_ref=None, ctx=ctx)
        return offloaded, inline, builtin_id

    offloaded, inline, builtin_id = asyncio.run(both())
    assert offloaded != main
    assert inline == main
    assert builtin_id == main


RAISING_PLUGIN = plugin_source(
    """
    class Boom(Exception):
        pass

    @hookimpl
    def opus_job_event(event, ctx):
        raise Boom("observer exploded")
    """
)


def test_each_isolate_logs_a_failing_impl_and_runs_the_others(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (plugins_dir / "a_sync.py").write_text(SYNC_PLUGIN)
    (plugins_dir / "b_raising.py").write_text(RAISING_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    ctx = ctx_for(tmp_path)

    with caplog.at_level(logging.ERROR, logger="opus_runner.plugins"):
        results = asyncio.run(host.each("opus_job_event", isolate=True, event="e", ctx=ctx))
    assert results == ["sync-observer"]
    assert sys.modules["opus_runner_local.a_sync"].SEEN == [("sync", "e")]
    logged = caplog.text
    assert str(plugins_dir / "b_raising.py") in logged
    assert "Boom: observer exploded" in logged

    # Without isolate the plugin's own exception comes through unchanged.
    boom = sys.modules["opus_runner_local.b_raising"].Boom
    with pytest.raises(boom, match="observer exploded"):
        asyncio.run(host.each("opus_job_event", event="e", ctx=ctx))


def test_first_rejects_unknown_hooks_and_missing_arguments(own_builtins: Any, tmp_path: Path) -> None:
    host = make_plugin_host(entrypoints=False)
    with pytest.raises(ValueError, match="unknown hook 'opus_nope'"):
        asyncio.run(host.first("opus_nope", ctx=None))
    with pytest.raises(TypeError, match="value"):
        asyncio.run(host.first("opus_coerce_value", field=field("x"), ctx=ctx_for(tmp_path)))


def test_template_globals_and_filters_merge_with_later_plugins_winning(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "a_first.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_template_globals(ctx):
                return {"who": "a", "only_a": 1}

            @hookimpl
            def opus_template_filters(ctx):
                return {"shout": lambda s: s.upper() + "!"}
            """
        )
    )
    (plugins_dir / "b_second.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_template_globals(ctx):
                return {"who": "b"}

            @hookimpl
            def opus_template_filters(ctx):
                return None
            """
        )
    )
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    assert host.template_globals(None) == {"who": "b", "only_a": 1}
    assert host.template_filters(None)["shout"]("hi") == "HI!"


def test_template_filters_must_be_callables(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "bad_filters.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_template_filters(ctx):
                return {"nope": 42}
            """
        )
    )
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    with pytest.raises(PluginError, match=r"bad_filters\.py.*filter 'nope' is not callable"):
        host.template_filters(None)


def test_hook_calls_are_traced_at_debug_with_secrets_masked(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    redact.register(secret)
    (plugins_dir / "echo.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_coerce_value(field, value, ctx):
                return "got " + value
            """
        )
    )
    log = logging.getLogger("test.trace")
    log.setLevel(logging.DEBUG)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False, log=log)
    with caplog.at_level(logging.DEBUG, logger="test.trace"):
        asyncio.run(host.first("opus_coerce_value", field=field("f"), value=secret, ctx=ctx_for(tmp_path)))
        host.pm.hook.opus_coerce_value(field=field("f"), value=secret, ctx=None)
    text = caplog.text
    assert "hook opus_coerce_value(" in text
    assert "echo" in text
    assert "'got ***'" in text
    assert secret not in text


# -- loading failures -------------------------------------------------------------------------


def test_a_failing_import_names_the_file_and_line(plugins_dir: Path, own_builtins: Any) -> None:
    bad = plugins_dir / "broken.py"
    bad.write_text("from opus_runner import hookimpl\n\nimport definitely_not_installed_xyz\n")
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    message = str(info.value)
    assert str(bad.resolve()) in message
    assert "ModuleNotFoundError: No module named 'definitely_not_installed_xyz' (line 3)" in message
    assert "--no-local-plugins" in message
    assert "\n" not in message
    assert info.value.exit_code == 2
    assert "opus_runner_local.broken" not in sys.modules


def test_a_syntax_error_names_the_file_and_line(plugins_dir: Path, own_builtins: Any) -> None:
    bad = plugins_dir / "typo.py"
    bad.write_text("from opus_runner import hookimpl\n\n\ndef oops(:\n    pass\n")
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    message = str(info.value)
    assert str(bad.resolve()) in message
    assert "SyntaxError" in message
    assert "(line 4)" in message


def test_a_misspelled_hook_name_is_refused_with_a_suggestion(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "misspelled.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_register_output(register):
                register("x", print)
            """
        )
    )
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    message = str(info.value)
    assert "misspelled.py" in message
    assert "unknown hook 'opus_register_output'" in message
    assert "did you mean 'opus_register_outputs'?" in message


def test_an_impl_asking_for_an_argument_the_hook_does_not_pass_is_refused(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "badargs.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_coerce_value(field, valu, ctx):
                return None
            """
        )
    )
    with pytest.raises(
        PluginError, match=r"badargs\.py: opus_coerce_value asks for argument\(s\) valu .*field, value, ctx"
    ):
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)


def test_a_module_without_hookimpls_is_refused(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "undecorated.py").write_text("def opus_job_event(event, ctx):\n    pass\n")
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    assert "defines no @hookimpl functions" in str(info.value)
    assert "is @hookimpl missing on opus_job_event?" in str(info.value)


def test_wrappers_are_refused(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "wrapper.py").write_text(
        plugin_source(
            """
            @hookimpl(wrapper=True)
            def opus_payload_ready(payload, ctx):
                return (yield)
            """
        )
    )
    with pytest.raises(PluginError, match="opus_payload_ready is declared as a wrapper"):
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)


def test_an_output_name_registered_twice_names_both_plugins(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "my_json.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_register_outputs(register):
                register("json", lambda result, config, ctx: None)
            """
        )
    )
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    message = str(info.value)
    assert "output type 'json' is registered by both opus_runner.builtins.outputs and" in message
    assert str((plugins_dir / "my_json.py").resolve()) in message


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ('register("Bad Name", print)', "'Bad Name' is not a valid notifier type name"),
        ('register("ok", 42)', "the handler of notifier type 'ok' is not callable"),
        ('register("ok", print, schema="{}")', "the schema of notifier type 'ok' must be a dict"),
        ("register()", "opus_register_notifiers failed: TypeError"),
    ],
)
def test_bad_registrations_are_plugin_errors(plugins_dir: Path, own_builtins: Any, call: str, expected: str) -> None:
    (plugins_dir / "badreg.py").write_text(
        plugin_source(
            f"""
            @hookimpl
            def opus_register_notifiers(register):
                {call}
            """
        )
    )
    with pytest.raises(PluginError) as info:
        make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    assert expected in str(info.value)
    assert "badreg.py" in str(info.value)


def test_a_broken_entry_point_names_the_distribution_and_version(area: ImportArea, own_builtins: Any) -> None:
    area.distribution("brokenpkg", "0.3.1", "brokenpkg", "raise RuntimeError('no config for you')\n")
    with pytest.raises(PluginError) as info:
        make_plugin_host()
    message = str(info.value)
    assert message.startswith("plugin brokenpkg 0.3.1: failed to load entry point brokenpkg = brokenpkg_plugin_")
    assert "RuntimeError: no config for you" in message


def test_entrypoints_false_skips_installed_plugins(area: ImportArea, own_builtins: Any) -> None:
    area.distribution("quietpkg", "1.0", "quietpkg", "raise RuntimeError('must not be imported')\n")
    host = make_plugin_host(entrypoints=False)
    assert [i.origin for i in host.describe()] == ["builtin", "builtin"]


def test_plugins_dir_none_or_missing_loads_nothing_from_the_folder(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any
) -> None:
    (plugins_dir / "present.py").write_text(tagging_coercer("present"))
    (plugins_dir / "_private.py").write_text("raise RuntimeError('underscore files are skipped')\n")
    assert "present" in [i.name for i in make_plugin_host(plugins_dir=plugins_dir, entrypoints=False).describe()]
    for folder in (None, tmp_path / "no-such-folder"):
        names = [i.name for i in make_plugin_host(plugins_dir=folder, entrypoints=False).describe()]
        assert names == list(OWN_BUILTINS)


def test_local_files_load_in_sorted_order(plugins_dir: Path, tmp_path: Path, own_builtins: Any) -> None:
    for name in ("zeta", "alpha", "mid"):
        (plugins_dir / f"{name}.py").write_text(tagging_coercer(name))
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    assert [i.name for i in host.describe() if i.origin == "local"] == ["alpha", "mid", "zeta"]
    ctx = ctx_for(tmp_path)
    assert asyncio.run(host.first("opus_coerce_value", field=field("any"), value=1, ctx=ctx)) == "zeta"


def test_plugin_option_accepts_a_file_path_and_refuses_a_missing_one(tmp_path: Path, own_builtins: Any) -> None:
    path = tmp_path / "extra_plugin.py"
    path.write_text(tagging_coercer("extra"))
    host = make_plugin_host(modules=[str(path)], entrypoints=False)
    info = host.describe()[-1]
    assert (info.name, info.origin, info.source) == ("extra_plugin", "option", str(path.resolve()))
    assert info.hooks == ["opus_coerce_value"]

    with pytest.raises(PluginError, match=r"--plugin .*nope\.py: no such file"):
        make_plugin_host(modules=[str(tmp_path / "nope.py")], entrypoints=False)
    with pytest.raises(PluginError, match=r"plugin no_such_module_xyz: failed to import: ModuleNotFoundError"):
        make_plugin_host(modules=["no_such_module_xyz"], entrypoints=False)


def test_the_same_file_loaded_twice_is_refused(plugins_dir: Path, own_builtins: Any) -> None:
    path = plugins_dir / "twice.py"
    path.write_text(tagging_coercer("twice"))
    with pytest.raises(
        PluginError, match=r"twice\.py: it is already loaded as a plugin of the plugins folder; load it only once"
    ):
        make_plugin_host(plugins_dir=plugins_dir, modules=[str(path)], entrypoints=False)


def test_each_host_is_fresh(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "fresh.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_register_outputs(register):
                register("fresh", lambda result, config, ctx: None)
            """
        )
    )
    with_folder = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    without = make_plugin_host(entrypoints=False)
    assert "fresh" in with_folder.outputs
    assert "fresh" not in without.outputs
    assert with_folder.pm is not without.pm


# -- describe ---------------------------------------------------------------------------------


def test_describe_lists_hooks_and_types_per_plugin(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "both.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_register_outputs(register):
                register("table", lambda result, config, ctx: None)

            @hookimpl
            def opus_register_notifiers(register):
                register("pager", lambda event, config, ctx: None, schema={"type": "object"})
            """
        )
    )
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    by_name = {i.name: i for i in host.describe()}
    assert by_name["opus_runner.builtins.outputs"].outputs == ["download", "json", "ndjson", "stdout"]
    assert by_name["opus_runner.builtins.notifiers"].notifiers == ["log", "webhook"]
    both = by_name["both"]
    assert both.origin == "local"
    assert both.hooks == ["opus_register_notifiers", "opus_register_outputs"]
    assert (both.outputs, both.notifiers) == (["table"], ["pager"])
    assert host.outputs["table"].plugin == "both"
    assert host.notifiers["pager"].schema is not None
    assert host.notifiers["pager"].schema["properties"]["on"]["items"]["enum"][0] == "submitted"


# -- check_config -----------------------------------------------------------------------------


@pytest.fixture
def host(own_builtins: Any) -> PluginHost:
    return make_plugin_host(entrypoints=False)


def messages(errors: list[Any]) -> list[str]:
    return [str(e) for e in errors]


def test_check_config_unknown_type_lists_known_ones_with_a_suggestion(host: PluginHost) -> None:
    errors = host.check_config(
        "outputs", [{"type": "stdout"}, {"type": "jsn", "path": "x"}], file="s.yaml", key="outputs"
    )
    assert messages(errors) == [
        "s.yaml: outputs[1].type: unknown output type 'jsn' (did you mean 'json'?); known types: "
        "download, json, ndjson, stdout. A type from a plugin needs that plugin installed or loaded"
    ]
    assert errors[0].key == ("outputs", 1, "type")
    errors = host.check_config("notify", [{"type": "smoke-signal"}], file="s.yaml", key="notify")
    assert "unknown notifier type 'smoke-signal'; known types: log, webhook" in str(errors[0])
    errors = host.check_config("notify", [{"url": "https://x"}, "webhook"], file="s.yaml", key="notify")
    assert messages(errors) == [
        "s.yaml: notify[0]: missing 'type'; known notifier types: log, webhook",
        "s.yaml: notify[1]: each notifier entry must be a mapping with a 'type', found str",
    ]


def test_check_config_schema_errors_carry_the_key_path(host: PluginHost) -> None:
    entries = [
        {"type": "json", "path": "ok.json"},
        {"type": "json", "pth": "typo.json"},
        {"type": "ndjson", "path": 7},
        {"type": "json", "path": "x.json", "indent": -1},
    ]
    assert messages(host.check_config("outputs", entries, file="s.yaml", key="outputs")) == [
        "s.yaml: outputs[1]: missing required key 'path'",
        "s.yaml: outputs[1].pth: unknown key 'pth'; did you mean 'path'?",
        "s.yaml: outputs[2].path: expected a string, found a number 7",
        "s.yaml: outputs[3].indent: -1 is less than the minimum of 0",
    ]
    notify = [
        {"type": "webhook", "url": "http://example.com/hook", "on": ["completed", "done"]},
        {"type": "log", "level": "loud"},
    ]
    assert messages(host.check_config("notify", notify, file="s.yaml", key=("notify",))) == [
        "s.yaml: notify[0].on[1]: 'done' is not one of 'submitted', 'status', 'completed', 'failed', "
        "'cancelled', 'timed_out'",
        "s.yaml: notify[0].url: 'http://example.com/hook' is not valid here: the URL to POST events to: "
        "https://, or http:// to localhost only",
        "s.yaml: notify[1].level: 'loud' is not one of 'debug', 'info', 'warning', 'error'",
    ]


def test_check_config_accepts_templates_until_they_are_rendered(host: PluginHost) -> None:
    templated = [
        {"type": "json", "path": "{{ vars.out }}", "indent": "{{ vars.indent }}"},
        {"type": "webhook", "url": "{{ secret('HOOK') }}", "on": "{{ vars.events }}"},
    ]
    assert host.check_config("outputs", templated[:1], file="s.yaml", key="outputs") == []
    assert host.check_config("notify", templated[1:], file="s.yaml", key="notify") == []
    # Rendered values are checked strictly.
    rendered = [{"type": "json", "path": "x.json", "indent": "two"}]
    assert messages(host.check_config("outputs", rendered, file="s.yaml", key="outputs")) == [
        "s.yaml: outputs[0].indent: expected an integer or null, found a string 'two'"
    ]


def test_check_config_uses_plugin_schemas_and_reports_broken_ones(plugins_dir: Path, own_builtins: Any) -> None:
    (plugins_dir / "schemas.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_register_outputs(register):
                register("table", print, schema={
                    "type": "object",
                    "properties": {"columns": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                })
                register("broken", print, schema={"type": "no-such-type"})
                register("free", print)
            """
        )
    )
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    check = host.check_config
    assert (
        check("outputs", [{"type": "table", "columns": ["a"]}, {"type": "free", "x": 1}], file="f", key="outputs") == []
    )
    assert messages(check("outputs", [{"type": "table", "columns": ["a", 2]}], file="f", key="outputs")) == [
        "f: outputs[0].columns[1]: expected a string, found a number 2"
    ]
    with pytest.raises(PluginError, match=r"schemas\.py: the config schema of output type 'broken' is not a valid"):
        check("outputs", [{"type": "broken"}], file="f", key="outputs")


def test_notify_events_defaults() -> None:
    assert notify_events({"type": "log"}) == DEFAULT_NOTIFY_ON == ("completed", "failed")
    assert notify_events({"type": "log", "on": ["submitted"]}) == ("submitted",)


# -- call_handler -----------------------------------------------------------------------------


def test_call_handler_awaits_async_runs_sync_in_a_thread_and_times_out() -> None:
    main = threading.get_ident()

    async def async_handler(x: int) -> tuple[str, int]:
        return "async", threading.get_ident()

    def sync_handler(x: int) -> tuple[str, int]:
        return "sync", threading.get_ident()

    async def slow(x: int) -> None:
        await asyncio.sleep(5)

    def h(func: Callable[..., Any]) -> Handler:
        return Handler(name="h", func=func, plugin="p")

    async def go() -> None:
        assert await call_handler(h(async_handler), 1) == ("async", main)
        kind, ident = await call_handler(h(sync_handler), 1, timeout=5)
        assert kind == "sync" and ident != main
        with pytest.raises(TimeoutError):
            await call_handler(h(slow), 1, timeout=0.05)

    asyncio.run(go())


# -- documentation ----------------------------------------------------------------------------


def test_every_hook_is_documented_in_the_plugin_guide() -> None:
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    names = hook_names()
    assert len(names) == 11
    missing = [n for n in names if not re.search(rf"\b{n}\b", guide)]
    assert missing == []
    # Each hook also has a section of its own with an example.
    for name in names:
        assert re.search(rf"^#+ .*`{name}", guide, re.M), f"no heading for {name}"


def guide_examples() -> list[tuple[str, str]]:
    """(heading, code) for every Python block under "A first plugin" and "The hooks"."""
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    found = []
    for part in re.split(r"^(?=#{2,3} )", guide, flags=re.M):
        heading = part.splitlines()[0]
        if heading.startswith("## A first plugin") or heading.startswith("### `opus_"):
            found += [(heading, code) for code in re.findall(r"^```python\n(.*?)^```", part, re.S | re.M)]
    return found


def test_the_guides_hook_examples_load_and_work(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = guide_examples()
    assert len(examples) == 13  # the first plugin, one per hook, and the WireValue form of coercion
    for n, (_, code) in enumerate(examples):
        (plugins_dir / f"example_{n:02d}.py").write_text(code)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    infos = {i.name: i for i in host.describe()}
    for n, (heading, _code) in enumerate(examples):
        hooks = infos[f"example_{n:02d}"].hooks
        if heading.startswith("### "):
            assert hooks == [heading.split("`")[1].split("(")[0]], heading
    assert {"shout", "markdown"} <= set(host.outputs) and "teams" in host.notifiers
    first_plugin = examples[0][1]
    assert len([line for line in first_plugin.splitlines() if line.strip()]) <= 10

    ctx = ctx_for(tmp_path)
    tags = InputField(variable_name="workflow_input_tags", display_name="Tags", type="array")
    assert asyncio.run(host.first("opus_coerce_value", field=tags, value="a, b,", ctx=ctx)) == ["a", "b"]
    from opus_runner import WireValue

    attachments = InputField(variable_name="workflow_input_attachments", display_name="A", type="array_files")
    chosen = asyncio.run(host.first("opus_coerce_value", field=attachments, value=["u"], ctx=ctx))
    assert chosen == WireValue(["u"], type="array_files")
    assert host.template_filters(None)["cents"]("12.34") == 1234
    from opus_runner.models import JobResult

    result = JobResult(job_id="j1", status="COMPLETED", outputs={"summary": "ok"}, spec_name="demo")
    asyncio.run(call_handler(host.outputs["shout"], result, {"type": "shout"}, ctx))
    assert capsys.readouterr().out == "SUMMARY: OK\n"
    asyncio.run(call_handler(host.outputs["markdown"], result, {"type": "markdown", "path": "r.md"}, ctx))
    assert (
        tmp_path / "r.md"
    ).read_text() == '# demo (COMPLETED)\n\n| output | value |\n|---|---|\n| summary | "ok" |\n'
    payload = {"v": {"type": "str", "value": "  padded  ", "displayName": "V"}}
    asyncio.run(host.each("opus_payload_ready", payload=payload, ctx=ctx))
    assert payload["v"]["value"] == "padded"


# -- the typed facade ----------------------------------------------------------------------------

FACADE_PLUGIN = plugin_source(
    """
    from pathlib import PurePosixPath

    from opus_runner.models import WireValue, WorkflowSchema

    HEARD = []

    @hookimpl
    def opus_workflow_schema(workflow_ref, ctx):
        if workflow_ref.id == "not-a-schema":
            return {"workflow_id": workflow_ref.id}
        return WorkflowSchema(workflow_id=workflow_ref.id, name="From the plugin")

    @hookimpl
    def opus_upload_file(field, source, ctx):
        # Not a str: the facade hands callers the URL as text.
        return PurePosixPath("/uploaded") / source if source != "pass" else None

    @hookimpl
    def opus_coerce_value(field, value, ctx):
        if field.variable_name == "plain":
            return value * 2
        if field.variable_name == "wired":
            return WireValue([value], type="array", type_definition={"items": "str"})
        return None

    @hookimpl
    def opus_payload_ready(payload, ctx):
        payload["seen"] = True

    @hookimpl
    def opus_job_event(event, ctx):
        HEARD.append(event.kind)
        raise RuntimeError("observers never stop a run")
    """
)


def test_the_facade_calls_each_hook_and_returns_the_hookspecs_types(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any
) -> None:
    from opus_runner.models import JobEvent, WireValue, WorkflowRef, WorkflowSchema

    (plugins_dir / "facade.py").write_text(FACADE_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    ctx = ctx_for(tmp_path)

    async def calls() -> list[Any]:
        payload: dict[str, Any] = {}
        await host.payload_ready(payload, ctx)
        await host.job_event(JobEvent(kind="submitted", job_id="j1", spec_name="s"), ctx)
        return [
            await host.workflow_schema(WorkflowRef("wf-1"), ctx),
            await host.upload_file(field("doc"), "a.pdf", ctx),
            await host.upload_file(field("doc"), "pass", ctx),
            await host.coerce_value(field("plain"), 21, ctx),
            await host.coerce_value(field("wired"), "x", ctx),
            await host.coerce_value(field("other"), "x", ctx),
            payload,
        ]

    schema, url, passed, plain, wired, uncoerced, payload = asyncio.run(calls())
    assert isinstance(schema, WorkflowSchema) and schema.name == "From the plugin"
    assert url == "/uploaded/a.pdf" and isinstance(url, str)
    assert passed is None
    # A plain value comes back wrapped without a type: sent with the type the schema states.
    assert plain == WireValue(42)
    assert wired == WireValue(["x"], type="array", type_definition={"items": "str"})
    assert uncoerced is None
    assert payload == {"seen": True}
    assert sys.modules["opus_runner_local.facade"].HEARD == ["submitted"]  # isolated, not raised


def test_a_facade_answer_of_the_wrong_type_names_the_plugin(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any
) -> None:
    from opus_runner.models import WorkflowRef

    (plugins_dir / "facade.py").write_text(FACADE_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    with pytest.raises(PluginError) as info:
        asyncio.run(host.workflow_schema(WorkflowRef("not-a-schema"), ctx_for(tmp_path)))
    assert info.value.plugin == str(plugins_dir / "facade.py")
    assert "opus_workflow_schema must return a WorkflowSchema or None, it returned dict" in str(info.value)


def test_a_hook_raising_through_the_facade_is_named_with_its_plugin(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any
) -> None:
    (plugins_dir / "a_quiet.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_payload_ready(payload, ctx):
                payload["quiet"] = True
            """
        )
    )
    (plugins_dir / "b_loud.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_payload_ready(payload, ctx):
                raise KeyError("workflow_input_secretless")
            """
        )
    )
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    with pytest.raises(PluginError) as info:
        asyncio.run(host.payload_ready({}, ctx_for(tmp_path)))  # offloaded to a thread, and still named
    error = info.value
    assert error.plugin == str(plugins_dir / "b_loud.py")
    assert "failed in opus_payload_ready: KeyError: 'workflow_input_secretless'; the job was not executed" in str(error)


# -- the template hooks' ctx ---------------------------------------------------------------------

CTX_TEMPLATE_PLUGIN = plugin_source(
    """
    CALLS = []

    @hookimpl
    def opus_template_globals(ctx):
        CALLS.append(("globals", ctx.spec.name if ctx.spec is not None else None, ctx.spec_dir))
        return {"spec_folder": lambda: ctx.spec_dir.name}

    @hookimpl
    def opus_template_filters(ctx):
        CALLS.append(("filters", ctx.spec.name if ctx.spec is not None else None, ctx.spec_dir))
        owner = ctx.spec.name if ctx.spec is not None else "the run"
        return {"signed": lambda text: f"{text} (for {owner})"}
    """
)


def test_the_template_hooks_get_a_context_for_the_spec_being_rendered(
    plugins_dir: Path, tmp_path: Path, own_builtins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opus_runner.planning import Planner
    from opus_runner.spec import load_spec
    from opus_runner.templating import Templater

    (plugins_dir / "ctx_templates.py").write_text(CTX_TEMPLATE_PLUGIN)
    host = make_plugin_host(plugins_dir=plugins_dir, entrypoints=False)
    specs = []
    for name in ("alpha", "beta"):
        folder = tmp_path / f"{name}-specs"
        folder.mkdir()
        path = folder / f"{name}.yaml"
        path.write_text(
            "apiVersion: opus-runner/v1\nkind: Job\n"
            f"metadata: {{name: {name}, title: \"{{{{ 'Report' | signed }}}} in {{{{ spec_folder() }}}}\"}}\n"
            "workflow: {id: 5a0d7e3c-8b21-4c6f-9e4a-2f7b1d0c8e93}\n"
            "matrix: {n: [1, 2]}\n"
        )
        specs.append(load_spec(path))
    monkeypatch.chdir(tmp_path)
    templater = Templater(environ={}, plugins=host)
    plans = list(Planner(templater).plans(specs))

    assert [p.title for p in plans] == [
        "Report (for alpha) in alpha-specs",
        "Report (for alpha) in alpha-specs",
        "Report (for beta) in beta-specs",
        "Report (for beta) in beta-specs",
    ]
    # Outside any spec the hooks get the documented run-level context; then once per spec.
    calls = sys.modules["opus_runner_local.ctx_templates"].CALLS
    assert calls == [
        ("globals", None, tmp_path),
        ("filters", None, tmp_path),
        ("globals", "alpha", tmp_path / "alpha-specs"),
        ("filters", "alpha", tmp_path / "alpha-specs"),
        ("globals", "beta", tmp_path / "beta-specs"),
        ("filters", "beta", tmp_path / "beta-specs"),
    ]
    assert templater.render_str("{{ 'x' | signed }}", {}) == "x (for the run)"
    # The spec's templater shares the run's secrets: one read there is the run's.
    monkeypatch.setenv("SIGNING_TOKEN", "tok-signing-0123456789")
    shared = Templater(plugins=host)
    assert shared.for_spec(specs[0]).render_str("{{ secret('SIGNING_TOKEN') }}", {}) == "tok-signing-0123456789"
    assert shared.secrets_used == {"SIGNING_TOKEN": "tok-signing-0123456789"}


# -- spec-schema with the plugins' config schemas -------------------------------------------------

MARKDOWN_OUTPUT_PLUGIN = plugin_source(
    """
    def markdown_output(result, config, ctx):
        pass

    @hookimpl
    def opus_register_outputs(register):
        register(
            "markdown",
            markdown_output,
            schema={
                "type": "object",
                "properties": {"path": {"type": "string"}, "level": {"type": "integer", "minimum": 1}},
                "required": ["path"],
                "additionalProperties": False,
            },
        )
    """
)


def test_spec_schema_includes_the_config_schemas_plugins_register(project: Any) -> None:
    import jsonschema

    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "markdown.py").write_text(MARKDOWN_OUTPUT_PLUGIN)
    result = project.run("spec-schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    def problems(outputs: list[Any]) -> list[str]:
        spec = {
            "apiVersion": "opus-runner/v1",
            "kind": "Job",
            "metadata": {"name": "report"},
            "workflow": {"id": WF["quick"]},
            "outputs": outputs,
        }
        return [e.message for e in validator.iter_errors(spec)]

    assert problems([{"type": "markdown", "path": "out.md", "level": 2}]) == []
    assert problems([{"type": "markdown", "path": "{{ metadata.name }}.md", "level": "{{ vars.level }}"}]) == []
    assert problems([{"type": "markdown", "level": 2}])  # its path is required
    assert problems([{"type": "markdown", "path": "out.md", "levle": 2}])  # no such key
    assert problems([{"type": "markdown", "path": "out.md", "level": 0}])
    # The built-in types' schemas are there too, and a type nobody registered is left to validate.
    assert problems([{"type": "junit", "path": "report.xml", "bogus": 1}])
    assert problems([{"type": "from-another-plugin", "anything": True}]) == []

    without = json.loads(project.run("spec-schema", "--no-local-plugins").stdout)
    assert "outputs-markdown" not in without["$defs"] and "outputs-junit" in without["$defs"]


# -- run-level hooks ---------------------------------------------------------------------------

RUN_HOOKS = plugin_source(
    """
    import json


    def log(ctx, entry):
        with open(ctx.root / "run-hooks.ndjson", "a") as handle:
            handle.write(json.dumps(entry) + "\\n")


    @hookimpl
    def opus_run_started(run, ctx):
        log(ctx, {"hook": "started", "run_id": run.run_id, "resumed": run.resumed, "spec": ctx.spec,
                  "started_at": run.started_at, "finished": [r.plan_key for r in run.results()]})


    @hookimpl
    def opus_run_finished(run, report, ctx):
        log(ctx, {"hook": "finished", "run_id": run.run_id, "resumed": run.resumed,
                  "finished": sorted(r.plan_key for r in run.results()),
                  "outcomes": sorted(o.plan_key for o in report.outcomes), "exit_code": report.exit_code})
    """
)


def test_run_hooks_frame_the_run_and_see_every_job_of_a_resumed_run(project: Any) -> None:
    import json

    from conftest import header

    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "run_hooks.py").write_text(RUN_HOOKS)
    project.file("rows.csv", "q\none\ntwo\n")
    spec = project.spec("b.yaml", header("b", "quick", "foreach: {file: rows.csv}\ninputs:\n  Question: '{{ row.q }}'\n"))
    assert project.run("validate", spec.name).exit_code == 0  # nothing submitted: no run hooks
    assert project.run("run", spec.name, "--dry-run").exit_code == 0
    assert not (project.root / "run-hooks.ndjson").exists()

    first = project.run("run", spec.name, "--no-wait")
    assert first.exit_code == 0, first.output
    resumed = project.run("resume")
    assert resumed.exit_code == 0, resumed.output
    entries = [json.loads(line) for line in (project.root / "run-hooks.ndjson").read_text().splitlines()]
    assert [(e["hook"], e["resumed"]) for e in entries] == [
        ("started", False), ("finished", False), ("started", True), ("finished", True)
    ]
    assert len({e["run_id"] for e in entries}) == 1
    assert entries[0]["spec"] is None and entries[0]["started_at"] == entries[2]["started_at"]
    assert entries[0]["finished"] == [] and entries[1]["finished"] == []  # --no-wait: none finished yet
    assert entries[3]["finished"] == entries[3]["outcomes"] and len(entries[3]["finished"]) == 2
    assert entries[3]["exit_code"] == 0


def test_a_raising_run_finished_hook_is_reported_and_fails_the_run(project: Any) -> None:
    from conftest import header

    (project.root / "plugins").mkdir()
    (project.root / "plugins" / "broken_report.py").write_text(
        plugin_source(
            """
            @hookimpl
            def opus_run_finished(run, report, ctx):
                raise OSError("reports/ is read-only")
            """
        )
    )
    result = project.run("run", project.spec("q.yaml", header("q", "quick", "inputs:\n  Question: hi\n")).name)
    assert result.exit_code == 1
    assert "failed in opus_run_finished: OSError: reports/ is read-only; the jobs' results are kept" in result.stderr
    assert "broken_report" in result.stderr
