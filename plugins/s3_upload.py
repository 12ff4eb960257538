"""S3 sources for file inputs: ``s3://bucket/key`` becomes a presigned https GET URL.

Put this file in your project's ``plugins/`` folder (``pip install boto3`` first) and write::

    inputs:
      Contract: {file: "s3://acme-legal/contracts/2026/q4.pdf"}
      Attachments: {files: ["s3://acme-legal/annex-a.csv", docs/annex-b.csv]}

Opus fetches the object through the presigned URL, so nothing is copied through this machine.
The object must exist (checked first, so a typo fails before the job is submitted) and, when
the workflow input lists allowed file types, have one of those extensions. AWS credentials
and region come from the usual boto3 places (environment, ``~/.aws``, instance role). The URL
stays valid for ``OPUS_S3_URL_EXPIRES`` seconds (default 3600); its signature is masked in
logs and the state journal like any secret.

It doubles as an example of a firstresult hook: it returns ``None`` for every source that is
not ``s3://``, so the built-in uploader (registered first, asked last) handles local files and
URLs. It is a plain ``def`` because boto3 blocks; the runner calls it in a worker thread.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from urllib.parse import parse_qs, urlsplit

from opus_runner import hookimpl
from opus_runner.models import Context, InputField
from opus_runner.redact import register as register_secret

DEFAULT_EXPIRES = 3600


def parse_s3_url(source: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; ``ValueError`` when either is missing."""
    parts = urlsplit(source)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{source!r} is not an S3 object URL; write s3://BUCKET/KEY naming one object")
    return bucket, key


def _expires() -> int:
    raw = os.environ.get("OPUS_S3_URL_EXPIRES", "")
    if not raw:
        return DEFAULT_EXPIRES
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise ValueError(f"OPUS_S3_URL_EXPIRES must be a number of seconds from 1 to 604800, found {raw!r}")
    return seconds


def _check_type(field: InputField, source: str, key: str) -> None:
    allowed = {t.upper().lstrip(".") for t in field.allowed_file_types}
    suffix = PurePosixPath(key).suffix.upper().lstrip(".")
    if allowed and suffix not in allowed:
        kind = f"a .{suffix.lower()} file" if suffix else "a file without an extension"
        raise ValueError(f"{source} is {kind}, but {field.display_name} accepts only {', '.join(sorted(allowed))}")


def presign(source: str, *, expires: int = DEFAULT_EXPIRES) -> str:
    """Check that the object exists and return a presigned https GET URL for it."""
    bucket, key = parse_s3_url(source)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise ValueError(f"{source}: reading s3:// files needs boto3; run `pip install boto3`") from None
    # Signature v4 works in every region (v2 does not) and allows up to 7 days of validity.
    client = boto3.client("s3", config=Config(signature_version="s3v4"))
    try:
        client.head_object(Bucket=bucket, Key=key)
    except NoCredentialsError:
        raise ValueError(
            f"{source}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise ValueError(f"S3 object {key!r} does not exist in bucket {bucket!r}; check the s3:// path") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise ValueError(
                f"access to S3 object {key!r} in bucket {bucket!r} is denied; check the AWS credentials' permissions"
            ) from None
        raise ValueError(f"cannot read S3 object {key!r} in bucket {bucket!r}: {code or exc}") from None
    except BotoCoreError as exc:
        raise ValueError(f"cannot reach S3 for {source}: {exc}") from None
    url: str = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
    # The signature (and a session token) grant access: mask them wherever the URL is shown.
    for name, values in parse_qs(urlsplit(url).query).items():
        if name.lower() in ("x-amz-signature", "x-amz-security-token", "signature"):
            for value in values:
                register_secret(value)
    return url


@hookimpl
def opus_upload_file(field: InputField, source: str, ctx: Context) -> str | None:
    """Presign ``s3://`` sources; pass (None) on anything else."""
    if not source.startswith("s3://"):
        return None
    bucket, key = parse_s3_url(source)
    _check_type(field, source, key)
    if ctx.dry_run:
        # Validation and --dry-run send nothing, so they need no AWS access either.
        return f"https://{bucket}.s3.amazonaws.com/{key}"
    return presign(source, expires=_expires())
