"""The artifact store: content addressing, immutability, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from shared.store import ArtifactStore, ImmutableObjectError, canonical_json, sha256_hex


def test_put_get_and_idempotent_replay(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    uri = store.put("a/b.json", b"one")
    assert uri == f"file://{tmp_path}/a/b.json"
    assert store.get("a/b.json") == b"one"
    assert store.get(uri) == b"one"
    assert store.put("a/b.json", b"one") == uri  # same bytes again: fine
    with pytest.raises(ImmutableObjectError):
        store.put("a/b.json", b"two")  # never overwritten in place
    assert store.get("a/b.json") == b"one"


def test_content_addressed_and_listing(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    digest, uri = store.put_content("blobs", b"xyz", ".bin")
    assert digest == sha256_hex(b"xyz")
    assert uri.endswith(f"blobs/{digest}.bin")
    table = pa.table({"x": [1, 2, 3]})
    sha, puri = store.put_parquet("tables", table)
    assert store.get_parquet(puri).equals(table)
    assert store.put_parquet("tables", table) == (sha, puri)  # deterministic bytes
    assert store.list("blobs") == [f"blobs/{digest}.bin"]
    assert store.list("absent") == []
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_create_claims_a_key_once(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.create("log/00000000.json", b"{}")
    with pytest.raises(FileExistsError):
        store.create("log/00000000.json", b"{}")


def test_bad_keys_and_foreign_uris(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(ValueError, match="bad store key"):
        store.put("../escape", b"x")
    with pytest.raises(ValueError, match="not in the store"):
        store.get("file:///elsewhere/x")


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
