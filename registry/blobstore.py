"""Where blob bytes live: a folder (the embedded default) or an S3-compatible object store.

Blobs are content-addressed (their sha256), so a write of bytes that are already there is a
no-op in effect; every write refreshes the object's time, which the garbage collector reads
(``registry.blobs.collect_garbage``). The database's ``blobs`` rows say which blobs exist and
who names them; a store only holds bytes. ``open_blob_store(settings)`` picks one from
``CLIPFIT_BLOB_URL``; ``None`` means the bytes stay in the database (``database``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .settings import Settings

THREADS = 16  # parallel writes (each a flush to disk, or a request) for many blobs


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(THREADS, thread_name_prefix="clipfit-blobs")


def _each(fn, items) -> list:
    """``fn`` over ``items`` on the blob threads (in order; the first error raised)."""
    items = list(items)
    return [fn(items[0])] if len(items) == 1 else list(_pool().map(fn, items))


class BlobStoreUnavailable(Exception):
    """The store does not answer (down, unreachable, refusing our credentials): retry later."""


class BlobMissing(Exception):
    """A blob the database names has no bytes in the store (restored from an older backup,
    deleted by hand): an operator's problem, never the caller's."""


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    size: int
    written_at: datetime  # the last write (UTC)


class BlobStore(Protocol):
    location: str  # where, for logs and docs (no credentials)

    def put(self, sha256: str, data: bytes) -> None: ...
    def put_many(self, blobs: dict[str, bytes]) -> None: ...
    def get(self, sha256: str) -> bytes: ...
    def get_many(self, digests: Iterable[str]) -> dict[str, bytes]: ...
    def delete(self, sha256: str) -> None: ...
    def stat(self, sha256: str) -> StoredObject | None: ...
    def objects(self) -> Iterator[StoredObject]: ...
    def check(self) -> None: ...


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class FileBlobStore:
    """``root/ab/cd/abcd...``: written to a temporary file in the same folder, flushed to disk
    and renamed, so a reader never sees half a blob."""

    def __init__(self, root: Path):
        self.root = root
        self.location = root.resolve().as_uri()

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, sha256: str, data: bytes) -> None:
        path = self._path(sha256)
        try:
            if path.exists():
                os.utime(path)  # named again: the collector's clock starts over
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise BlobStoreUnavailable(f"cannot write to the blob folder: {e.strerror}") from e

    def put_many(self, blobs: dict[str, bytes]) -> None:
        _each(lambda item: self.put(*item), blobs.items())  # the flushes overlap

    def get(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise BlobMissing(sha256) from e
        except OSError as e:
            raise BlobStoreUnavailable(f"cannot read the blob folder: {e.strerror}") from e

    def get_many(self, digests: Iterable[str]) -> dict[str, bytes]:
        return {sha256: self.get(sha256) for sha256 in set(digests)}

    def delete(self, sha256: str) -> None:
        try:
            self._path(sha256).unlink(missing_ok=True)
        except OSError as e:
            raise BlobStoreUnavailable(f"cannot delete from the blob folder: {e.strerror}") \
                from e

    def stat(self, sha256: str) -> StoredObject | None:
        try:
            st = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredObject(sha256, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def objects(self) -> Iterator[StoredObject]:
        if not self.root.is_dir():
            return
        for first in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not first.is_dir():
                continue
            for second in os.scandir(first.path):
                if not second.is_dir():
                    continue
                for entry in os.scandir(second.path):
                    if _is_digest(entry.name):
                        st = entry.stat()
                        yield StoredObject(entry.name, st.st_size,
                                           datetime.fromtimestamp(st.st_mtime, UTC))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise BlobStoreUnavailable(f"the blob folder {self.root} is not writable")
        except OSError as e:
            raise BlobStoreUnavailable(f"cannot use the blob folder: {e.strerror}") from e


class S3BlobStore:
    """``s3://bucket/prefix``: objects ``prefix/ab/abcd...`` through boto3, with short
    timeouts, so a store that is away costs a request seconds, not minutes."""

    def __init__(self, bucket: str, prefix: str, client):
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, sha256: str) -> str:
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise BlobMissing(kwargs.get("Key", "")) from e
            raise BlobStoreUnavailable(f"the object store refused to {what} ({code or 'error'}"
                                       f") at {self.location}") from e
        except BotoCoreError as e:  # no connection, timeouts, credentials
            raise BlobStoreUnavailable(f"the object store at {self.location} cannot {what}: "
                                       f"{type(e).__name__}") from e

    def put(self, sha256: str, data: bytes) -> None:
        self._call("write", self.client.put_object, Key=self._key(sha256), Body=data)

    def put_many(self, blobs: dict[str, bytes]) -> None:
        _each(lambda item: self.put(*item), blobs.items())

    def get(self, sha256: str) -> bytes:
        answer = self._call("read", self.client.get_object, Key=self._key(sha256))
        from botocore.exceptions import BotoCoreError

        try:
            return answer["Body"].read()
        except BotoCoreError as e:
            raise BlobStoreUnavailable(f"the object store at {self.location} cannot read: "
                                       f"{type(e).__name__}") from e

    def get_many(self, digests: Iterable[str]) -> dict[str, bytes]:
        digests = list(set(digests))
        return dict(zip(digests, _each(self.get, digests), strict=True)) if digests else {}

    def delete(self, sha256: str) -> None:
        self._call("delete", self.client.delete_object, Key=self._key(sha256))

    def stat(self, sha256: str) -> StoredObject | None:
        try:
            head = self._call("read", self.client.head_object, Key=self._key(sha256))
        except BlobMissing:
            return None
        return StoredObject(sha256, head["ContentLength"], head["LastModified"].astimezone(UTC))

    def objects(self) -> Iterator[StoredObject]:
        """Every object under the prefix, a page (1,000) at a time."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=prefix, **token)
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if _is_digest(name):
                    yield StoredObject(name, item["Size"], item["LastModified"].astimezone(UTC))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def check(self) -> None:
        self._call("answer", self.client.head_bucket)


def _s3_client(settings: Settings):
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a server dependency
        raise RuntimeError("CLIPFIT_BLOB_URL=s3://... needs boto3: pip install "
                           "'clipfit[server]'") from e
    secret = settings.s3_secret_access_key.get_secret_value()
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=secret or None,
        config=Config(connect_timeout=2, read_timeout=20, retries={"max_attempts": 2,
                                                                     "mode": "standard"},
                      max_pool_connections=THREADS * 2,
                      s3={"addressing_style": "path"}))


def blob_url(settings: Settings) -> str:
    """The store's URL, the default resolved (the folder ``blobs`` in the data directory)."""
    url = settings.blob_url.strip()
    if not url:
        return (settings.data_dir / "blobs").resolve().as_uri()
    return url.rstrip("/") if url.startswith("s3://") else url


def open_blob_store(settings: Settings) -> BlobStore | None:
    """The store ``CLIPFIT_BLOB_URL`` names (None: ``database``). A URL that is not one of
    the forms raises ``ValueError`` saying which are."""
    url = blob_url(settings)
    if url == "database":
        return None
    parts = urlsplit(url)
    if parts.scheme == "file" and not parts.netloc:
        return FileBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(parts.netloc, unquote(parts.path), _s3_client(settings))
    raise ValueError(f"CLIPFIT_BLOB_URL={url!r} is not one of: empty (a folder in the data "
                     "directory), file:///absolute/folder, s3://bucket[/prefix], database")

