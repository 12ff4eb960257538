"""The ``download`` output: save a job's file outputs into a folder, fetching only where it should.

File URLs come from the server, so they are not trusted to point anywhere: a file is fetched
from the presigned URL the API's download route (``POST /job/file/download``) returned for it,
or from the Opus service's own origin (the client's base URL), or from a host the output's
``allow_hosts`` names. Every hop, redirects included (followed here, by hand, at most
:data:`MAX_REDIRECTS`), is checked before it is requested: https only (plain http only to
loopback), no redirect to another host, and no host that resolves to a private, loopback,
link-local, unspecified, multicast or reserved address. The service's own origin (the sandbox
runs on loopback http) and the hosts of ``allow_hosts`` are exempt from the address check.

Registered by :mod:`opus_runner.builtins.outputs` with the other built-in outputs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from .. import files
from ..errors import ApiError, NotFoundError
from ..models import Context, JobResult
from ..paths import PATH_KEYWORD, resolve_spec_path
from ..results import parse_results
from . import display_url, http_client, is_loopback_host, request_without_key

#: Redirects followed for one file before giving up (each hop checked like the first).
MAX_REDIRECTS = 5

DOWNLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dir": {"type": "string", "minLength": 1, "description": "Folder for the files; relative to the spec.", PATH_KEYWORD: True},
        "outputs": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Only these outputs (variable or display names); default: every file output.",
        },
        "allow_hosts": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "description": "Further hosts files may come from (host or host:port), private addresses included.",
        },
    },
    "required": ["dir"],
    "additionalProperties": False,
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 150
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class DownloadRefused(RuntimeError):
    """A file URL (or a redirect) points where the download output does not fetch from."""


# -- which outputs, which names ---------------------------------------------------------------


def _file_outputs(result: JobResult) -> list[tuple[str, str | None, list[str]]]:
    """``(variable name, display name, urls)`` of each file-typed output, in every results shape
    (:mod:`opus_runner.results`): typed ``file``/``array_files`` entries and the older
    ``outputFiles`` list."""
    return [(f.name, f.display_name, list(f.urls)) for f in parse_results(result.raw or {}).files]


def file_urls(result: JobResult, only: list[str] | None = None) -> list[tuple[str, str]]:
    """``(output name, url)`` for every file-typed output of ``result``.

    ``only`` keeps the outputs whose variable or display name it lists (``outputFiles`` names
    the legacy list).
    """
    return [
        (name, url)
        for name, display, urls in _file_outputs(result)
        if only is None or name in only or display in only
        for url in urls
    ]


def _safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text).lstrip("._-")
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: _MAX_NAME - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:_MAX_NAME]
    return name


def safe_file_name(url: str, fallback: str = "download") -> str:
    """A file name from the URL's last path segment that cannot leave its folder.

    Percent-escapes are decoded first, then only letters, digits, ``.``, ``_`` and ``-`` are
    kept; leading dots go, so neither ``..`` nor hidden files can come out. ``fallback`` (an
    output name, also from the server) goes through the same cleaning.
    """
    segment = unquote(urlsplit(url).path).replace("\\", "/").rsplit("/", 1)[-1]
    return _safe_name(segment) or _safe_name(fallback) or "download"


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
    taken.add(candidate.lower())
    return candidate


def plan_downloads(urls: list[tuple[str, str]], folder: Path) -> Iterator[tuple[str, Path]]:
    """Pair each URL with a distinct, safe path inside ``folder``."""
    taken: set[str] = set()
    root = folder.resolve()
    for output_name, url in urls:
        target = root / _unique(safe_file_name(url, fallback=output_name), taken)
        if target.parent != root:  # cannot happen with safe names; refuse rather than trust
            raise ValueError(f"refusing to write {target} outside {root}")
        yield url, target


def _check_names(result: JobResult, names: list[str]) -> None:
    """A name in ``outputs:`` that matches no file output is a typo, not "nothing to do"."""
    known = {n for name, display, _ in _file_outputs(result) for n in (name, display) if n}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"download: job {result.job_id} has no file output named {', '.join(map(repr, unknown))}; "
            f"its file outputs are: {', '.join(sorted(known)) or 'none'}"
        )


# -- where files may come from ----------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.rstrip(".").lower(), port or (443 if parts.scheme == "https" else 80)


def _same_host(url: str, other: str) -> bool:
    """Same host name; a change of port or scheme is left to :meth:`DownloadPolicy.check`."""
    here, there = _origin(url), _origin(other)
    return here is not None and there is not None and here[1] == there[1]


def _blocked_address(address: str) -> bool:
    """True for an address a file must not be fetched from unless configured: anything but a
    public unicast address (IPv4-mapped IPv6 judged as the IPv4 it maps)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


@dataclass(frozen=True)
class DownloadPolicy:
    """Where one ``download`` output may fetch from: the service's origin and ``allow_hosts``."""

    service: tuple[str, str, int] | None = None
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def for_run(cls, ctx: Context, config: dict[str, Any]) -> DownloadPolicy:
        client = getattr(ctx, "client", None)
        base_url = getattr(client, "base_url", None)
        return cls(
            service=_origin(base_url) if isinstance(base_url, str) else None,
            allow_hosts=frozenset(str(h).strip().rstrip(".").lower() for h in config.get("allow_hosts") or ()),
        )

    def is_service(self, url: str) -> bool:
        return self.service is not None and _origin(url) == self.service

    def listed(self, url: str) -> bool:
        origin = _origin(url)
        if origin is None:
            return False
        host = origin[1]
        shown = f"[{host}]" if ":" in host else host
        return bool({host, shown, f"{shown}:{origin[2]}"} & self.allow_hosts)

    def may_fetch_directly(self, url: str) -> bool:
        """A file URL the download route did not exchange: only from the service or a listed host."""
        return self.is_service(url) or self.listed(url)

    async def check(self, url: str) -> None:
        """Raise :class:`DownloadRefused` unless ``url`` may be requested now."""
        origin = _origin(url)
        if origin is None:
            raise DownloadRefused(f"{display_url(url)} is not an http(s) URL")
        scheme, host, port = origin
        if scheme == "http" and not is_loopback_host(host):
            raise DownloadRefused(f"{display_url(url)} is plain http to a host that is not loopback; files come over https")
        if self.is_service(url) or self.listed(url):
            return
        for address in await _addresses(host, port):
            if _blocked_address(address):
                raise DownloadRefused(
                    f"{display_url(url)} resolves to {address}, a private or local address; "
                    f"add {host!r} to the download output's allow_hosts to fetch from it"
                )


async def _addresses(host: str, port: int) -> Iterable[str]:
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadRefused(f"the host {host!r} could not be resolved: {exc}") from None
    return sorted({str(info[4][0]) for info in found})


# -- fetching ---------------------------------------------------------------------------------


async def _presigned_for(ctx: Context, url: str) -> str | None:
    """The presigned URL to GET the bytes of output file ``url`` from, or None.

    Output files are references that live clients could not fetch directly (opus-api.md section
    4): ``POST /job/file/download`` turns one into a presigned URL. None for a URL the API does
    not know as a file (404, 400), or a run without a client: the caller decides whether that
    URL may be fetched as it is.
    """
    client = getattr(ctx, "client", None)
    if client is None:
        return None
    try:
        answer = await client.file_download_url(url)
    except NotFoundError:
        return None
    except ApiError as exc:
        if exc.status_code == 400:
            return None
        raise
    return str(answer["presignedUrl"])


async def _download(http: Any, url: str, target: Path, policy: DownloadPolicy) -> None:
    for _hop in range(MAX_REDIRECTS + 1):
        await policy.check(url)
        request = request_without_key(http, "GET", url)
        response = await http.send(request, stream=True, follow_redirects=False, auth=None)
        try:
            location = response.headers.get("location") if response.status_code in _REDIRECTS else None
            if location:
                following = urljoin(url, location)
                if not _same_host(url, following) and not policy.listed(following):
                    raise DownloadRefused(
                        f"{display_url(url)} redirects to another host, {display_url(following, path=False)}; "
                        "add it to the download output's allow_hosts to follow"
                    )
                url = following
                continue
            if not response.is_success:
                raise RuntimeError(f"{display_url(url)} answered HTTP {response.status_code}")
            writer = await asyncio.to_thread(files.AtomicFile, target)
            try:
                async for chunk in response.aiter_bytes(1 << 16):
                    await asyncio.to_thread(writer.write, chunk)
                await asyncio.to_thread(writer.commit)
            except BaseException:
                writer.abort()
                raise
            return
        finally:
            await response.aclose()
    raise DownloadRefused(f"{display_url(url)}: more than {MAX_REDIRECTS} redirects")


async def download_output(result: JobResult, config: dict[str, Any], ctx: Context) -> list[Path]:
    """Download every file-typed output into ``config["dir"]``; return the written paths.

    Each file reference is exchanged for a presigned URL (``POST /job/file/download``, with the
    key), then fetched without the key. Each file is streamed to a temporary file and renamed
    into place, so a failed download leaves nothing half-written; a failure names the output
    and the file.
    """
    only = config.get("outputs")
    if only is not None and result.ok:
        _check_names(result, list(only))
    folder = resolve_spec_path(config["dir"], ctx, key="dir")
    names = {url: name for name, url in file_urls(result, only)}
    planned = list(plan_downloads(file_urls(result, only), folder))
    policy = DownloadPolicy.for_run(ctx, config)
    written: list[Path] = []
    async with http_client(ctx) as http:
        for url, target in planned:
            try:
                source = await _presigned_for(ctx, url)
                if source is None and not policy.may_fetch_directly(url):
                    raise DownloadRefused(
                        f"{display_url(url)} is not on the Opus service's host and the download route "
                        "did not return it; add its host to the download output's allow_hosts to fetch it"
                    )
                await _download(http, source or url, target, policy)
            except Exception as exc:  # noqa: BLE001 - named with the file, then raised as one sentence
                reason = str(exc) if isinstance(exc, (ApiError, RuntimeError)) else f"{type(exc).__name__}: {exc}"
                raise RuntimeError(
                    f"could not download output {names.get(url, '?')!r} ({target.name}) of job "
                    f"{result.job_id}: {reason}"
                ) from None
            written.append(target)
    if written:
        ctx.log.info("downloaded %d file(s) of job %s into %s", len(written), result.job_id, folder)
    return written
