"""The sandboxed Jinja environment of SPEC.md section 1."""

from __future__ import annotations

import datetime as dt

import pytest

from opus_runner import redact
from opus_runner.errors import TemplateError
from opus_runner.templating import Templater, build_context, contains_template


@pytest.fixture
def templater() -> Templater:
    return Templater(environ={"HOME_REGION": "eu", "API_TOKEN": "tok-very-secret-123"})


def ctx(t: Templater, **kw):
    return build_context(t, **kw)


def test_single_expression_keeps_native_type(templater: Templater) -> None:
    c = ctx(templater, vars={"items": [1, 2], "n": 4.5, "flag": True, "cfg": {"a": 1}})
    assert templater.render("{{ vars.items }}", c) == [1, 2]
    assert templater.render("  {{ vars.n }}  ", c) == 4.5
    assert templater.render("{{ vars.flag }}", c) is True
    assert templater.render("{{ vars.cfg }}", c) == {"a": 1}
    assert type(templater.render("{{ vars }}", c)) is dict


def test_other_strings_render_to_strings(templater: Templater) -> None:
    c = ctx(templater, vars={"n": 3})
    assert templater.render("n={{ vars.n }}", c) == "n=3"
    assert templater.render("{{ vars.n }}{{ vars.n }}", c) == "33"
    assert templater.render("plain text", c) == "plain text"


def test_only_string_leaves_render_and_structure_cannot_be_injected(templater: Templater) -> None:
    c = ctx(templater, vars={"evil": "x\nmetadata: {name: pwned}"})
    doc = {"a": ["{{ vars.evil }}", 3, None], "b": {"c": "{{ 1 + 1 }}"}, "n": 7}
    out = templater.render(doc, c)
    assert out == {"a": ["x\nmetadata: {name: pwned}", 3, None], "b": {"c": 2}, "n": 7}


def test_dict_method_names_are_variables_first(templater: Templater) -> None:
    c = ctx(templater, vars={"items": ["a"], "keys": "k"})
    assert templater.render("{{ vars.items }}", c) == ["a"]
    assert templater.render("{{ vars.keys }}", c) == "k"


def test_context_names(templater: Templater) -> None:
    c = ctx(templater, vars={"v": 1}, matrix={"region": "us"}, row={"customer": "ACME"}, metadata={"name": "x"})
    assert templater.render("{{ env.HOME_REGION }}-{{ matrix.region }}-{{ row.customer }}-{{ metadata.name }}", c) == "eu-us-ACME-x"
    assert isinstance(templater.render("{{ now() }}", c), dt.datetime)
    assert templater.render("{{ now().tzinfo is not none }}", c) is True
    assert templater.render("{{ today() }}", c) == dt.datetime.now(dt.timezone.utc).date()


def test_undefined_names_the_file_key_and_name(templater: Templater) -> None:
    c = ctx(templater, vars={"month": "2026-11"})
    with pytest.raises(TemplateError) as err:
        templater.render("{{ vars.mnth }}", c, file="specs/a.yaml", key=("inputs", "Title"))
    text = str(err.value)
    assert text.startswith("specs/a.yaml: inputs.Title:")
    assert "vars has no key 'mnth'" in text and "did you mean 'month'" in text
    assert err.value.exit_code == 2
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        templater.render("x {{ nope }}", c)


def test_missing_row_column_lists_the_columns(templater: Templater) -> None:
    c = ctx(templater, row={"customer": "a", "region": "b"})
    with pytest.raises(TemplateError, match=r"row has no key 'month' \(it has: customer, region\)"):
        templater.render("{{ row.month }}", c)


def test_env_names_are_never_listed(templater: Templater) -> None:
    with pytest.raises(TemplateError) as err:
        templater.render("{{ env.NOPE }}", ctx(templater))
    assert "API_TOKEN" not in str(err.value) and "HOME_REGION" not in str(err.value)


def test_syntax_error(templater: Templater) -> None:
    with pytest.raises(TemplateError, match="template syntax error"):
        templater.render("{% if %}", ctx(templater), file="s.yaml", key=("metadata", "title"))


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "x {{ vars.__class__.__init__.__globals__ }}",
        "{{ now.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_sandbox_refuses_python_internals(templater: Templater, template: str) -> None:
    with pytest.raises(TemplateError) as err:
        templater.render(template, ctx(templater), file="s.yaml", key=("inputs", "X"))
    assert "s.yaml: inputs.X" in str(err.value)
    assert "unsafe" in str(err.value) or "undefined" in str(err.value)


def test_immutable_sandbox_refuses_mutation(templater: Templater) -> None:
    with pytest.raises(TemplateError):
        templater.render("{{ vars.items.append(3) }}", ctx(templater, vars={"items": [1]}))


def test_secret_reads_env_and_is_masked(templater: Templater) -> None:
    value = templater.render("{{ secret('API_TOKEN') }}", ctx(templater))
    assert value == "tok-very-secret-123"
    assert redact.mask(f"Bearer {value}") == "Bearer ***"


def test_missing_secret_is_an_error_unless_tolerated() -> None:
    strict = Templater(environ={})
    with pytest.raises(TemplateError, match="environment variable NOPE_TOKEN is not set"):
        strict.render("{{ secret('NOPE_TOKEN') }}", ctx(strict))
    lenient = Templater(environ={}, missing_secrets_ok=True)
    assert lenient.render("{{ secret('NOPE_TOKEN') }}", ctx(lenient)) == "***"
    assert lenient.missing_secrets == {"NOPE_TOKEN"}


@pytest.mark.parametrize(("value", "said"), [("abc", "has only 3 characters"), ("a", "has only 1 character;"), ("", "is empty")])
def test_a_secret_too_short_to_mask_is_an_error_naming_the_variable(value: str, said: str) -> None:
    t = Templater(environ={"SHORT_TOKEN": value})
    with pytest.raises(TemplateError, match=f"environment variable SHORT_TOKEN {said}.*at least 4 characters"):
        t.render("{{ secret('SHORT_TOKEN') }}", ctx(t), file="s.yaml", key=("inputs", "t"))
    assert t.secrets_used == {}


def test_the_secrets_read_are_kept_by_name_and_reported_once() -> None:
    seen = []
    t = Templater(environ={"A_TOKEN": "value-of-a", "B_TOKEN": "value-of-b"})
    t.on_secret = lambda name, value: seen.append((name, value))
    for _ in range(3):
        t.render("{{ secret('A_TOKEN') }} {{ secret('B_TOKEN') }}", ctx(t))
    assert t.secrets_used == {"A_TOKEN": "value-of-a", "B_TOKEN": "value-of-b"}
    assert seen == [("A_TOKEN", "value-of-a"), ("B_TOKEN", "value-of-b")]


@pytest.mark.parametrize(
    "source",
    ["{{ env.OPUS_SERVICE_KEY }}", "k={{ env['OPUS_SERVICE_KEY'] }}", "{{ secret('OPUS_SERVICE_KEY') }}"],
)
def test_the_service_key_is_never_templated(source: str) -> None:
    t = Templater(environ={"OPUS_SERVICE_KEY": "sk-never-templated-42", "OTHER": "x"})
    assert redact.mask("sk-never-templated-42") == "***"  # registered before anything renders
    with pytest.raises(TemplateError, match=r"OPUS_SERVICE_KEY is the Opus service key, which is never templated.*secret\('NAME'\)"):
        t.render(source, ctx(t))


def test_env_lists_and_gets_no_service_key() -> None:
    t = Templater(environ={"OPUS_SERVICE_KEY": "sk-never-templated-43", "OTHER": "x"})
    assert t.render("{{ env | list }}", ctx(t)) == ["OTHER"]
    assert t.render("{{ env.get('OPUS_SERVICE_KEY') }}", ctx(t)) is None
    assert t.render("{{ env.OTHER }}", ctx(t)) == "x"


def test_plugin_globals_and_filters() -> None:
    t = Templater(environ={}, globals={"answer": lambda: 42}, filters={"shout": lambda s: s.upper() + "!"})
    assert t.render("{{ answer() }}", ctx(t)) == 42
    assert t.render("{{ 'hi' | shout }}", ctx(t)) == "HI!"


def test_a_failing_filter_is_reported_with_location() -> None:
    def boom(value):
        raise RuntimeError("bad value")

    t = Templater(environ={}, filters={"boom": boom})
    with pytest.raises(TemplateError, match="s.yaml: inputs.A: template .* failed: bad value"):
        t.render("{{ 1 | boom }}", ctx(t), file="s.yaml", key=("inputs", "A"))


def test_contains_template() -> None:
    assert contains_template({"a": [1, "{{ x }}"]})
    assert not contains_template({"a": [1, "x"]})


def test_dotted_lookups_match_jinja(templater: Templater) -> None:
    # The fast path for `row.x`-style expressions must give what Jinja gives, and leave every
    # other case (plain dicts, globals, missing keys) to Jinja.
    c = ctx(templater, vars={"cfg": {"items": 1, "depth": 2}, "n": 3}, row={"customer": "ACME", "items": [1]})
    assert templater.render("{{ row.customer }}", c) == "ACME"
    assert templater.render("{{ row.items }}", c) == [1]
    assert templater.render("{{ vars.cfg }}", c) == {"items": 1, "depth": 2}
    assert templater.render("{{ vars.cfg.depth }}", c) == 2
    assert callable(templater.render("{{ vars.cfg.items }}", c))  # a plain dict: Jinja's rules
    with pytest.raises(TemplateError, match="row has no key 'custmer'; did you mean 'customer'"):
        templater.render("{{ row.custmer }}", c)
