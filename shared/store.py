"""The artifact store: immutable, content-addressed objects behind one URI.

``file://PATH`` (default ``file://./var/store``) or any URI pyarrow's filesystems
understand (``s3://bucket/prefix`` in production). Writes are atomic — a temp file
plus a link/rename locally, a single put on object stores — and nothing is ever
overwritten in place: writing different bytes to an existing key is an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class ImmutableObjectError(FileExistsError):
    """A write would change an object that already exists."""


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Keys are ``/``-separated paths below the store's root.

    Args:
        uri: ``file://PATH`` (relative paths allowed) or a pyarrow filesystem URI.
    """

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._local: Path | None = None
        if uri.startswith("file://") or "://" not in uri:
            root = uri.removeprefix("file://")
            self._local = Path(root).expanduser().resolve()
            self._local.mkdir(parents=True, exist_ok=True)
            self._fs: pafs.FileSystem = pafs.LocalFileSystem()
            self._root = str(self._local)
        else:
            self._fs, self._root = pafs.FileSystem.from_uri(uri)

    @property
    def root(self) -> str:
        """Absolute root path inside the filesystem."""
        return self._root

    def _path(self, key: str) -> str:
        key = key.strip("/")
        if not key or ".." in key.split("/"):
            raise ValueError(f"bad store key {key!r}")
        return f"{self._root}/{key}"

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (what events carry)."""
        if self._local is not None:
            return f"file://{self._local}/{key.strip('/')}"
        return f"{self.uri}/{key.strip('/')}"

    def key_for(self, uri_or_key: str) -> str:
        """Turn a URI of this store (or a key) back into a key."""
        for prefix in (self.uri_for(""), self.uri + "/"):
            if uri_or_key.startswith(prefix):
                return uri_or_key[len(prefix) :]
        if "://" in uri_or_key:
            raise ValueError(f"{uri_or_key!r} is not in the store {self.uri!r}")
        return uri_or_key

    def exists(self, key: str) -> bool:
        """True when an object is stored under ``key``."""
        info = self._fs.get_file_info(self._path(key))
        return bool(info.type == pafs.FileType.File)

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (or a URI of this store)."""
        with self._fs.open_input_stream(self._path(self.key_for(key))) as f:
            return bytes(f.read())

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` once; returns its URI.

        Writing the same bytes again is a no-op (idempotent replays); writing other
        bytes raises :class:`ImmutableObjectError`.
        """
        path = self._path(key)
        if self.exists(key):
            if sha256_hex(self.get(key)) != sha256_hex(data):
                raise ImmutableObjectError(f"{key} exists with other content")
            return self.uri_for(key)
        if self._local is not None:
            self._put_local(Path(path), data)
        else:
            # An object-store put is atomic: readers see all of it or nothing.
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self._fs.open_output_stream(path) as out:
                out.write(data)
        return self.uri_for(key)

    def create(self, key: str, data: bytes) -> str:
        """Store ``data`` under a key that must not exist yet (FileExistsError if it does).

        Used for append-only logs where the key itself is the claim (e.g. a sequence number).
        """
        if self.exists(key):
            raise FileExistsError(key)
        return self.put(key, data)

    @staticmethod
    def _put_local(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                # link() fails if the target exists: a concurrent writer cannot be clobbered.
                os.link(tmp, path)
            except FileExistsError:
                if sha256_hex(path.read_bytes()) != sha256_hex(data):
                    raise ImmutableObjectError(f"{path} exists with other content") from None
        finally:
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the new directory entry durable too
        finally:
            os.close(dir_fd)

    def put_content(self, prefix: str, data: bytes, suffix: str = "") -> tuple[str, str]:
        """Store ``data`` named by its sha256 under ``prefix``; returns (sha256, uri)."""
        digest = sha256_hex(data)
        return digest, self.put(f"{prefix.strip('/')}/{digest}{suffix}", data)

    def list(self, prefix: str) -> list[str]:
        """Keys of the objects below ``prefix``, sorted."""
        base = self._path(prefix)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        keys = [
            info.path[len(self._root) + 1 :]
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".tmp-")
        ]
        return sorted(keys)

    # --- JSON and Parquet helpers --------------------------------------------------------

    def put_json(self, key: str, obj: Any) -> str:
        """Store ``obj`` as canonical JSON under ``key``."""
        return self.put(key, canonical_json(obj))

    def get_json(self, key: str) -> Any:
        """Load the JSON object under ``key``."""
        return json.loads(self.get(key))

    def put_parquet(self, prefix: str, table: pa.Table) -> tuple[str, str]:
        """Store ``table`` as a content-addressed Parquet object; returns (sha256, uri)."""
        return self.put_content(prefix, parquet_bytes(table), ".parquet")

    def get_parquet(self, key: str) -> pa.Table:
        """Read the Parquet object under ``key`` (or a URI of this store)."""
        return pq.read_table(io.BytesIO(self.get(key)))


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): equal objects hash equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet bytes for ``table`` (no creation timestamps in the file)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", store_schema=True)
    return sink.getvalue()
