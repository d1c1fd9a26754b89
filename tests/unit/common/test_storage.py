"""The object store behaves the same on a local folder and on a real S3 server (SeaweedFS).

Every test taking ``store`` runs twice: once on a local root, once on ``s3://<fresh bucket>`` of
the session's ``weed mini`` server (tests/fixtures/s3.py). Run:
``.venv/bin/python -m pytest -q tests/unit/common/test_storage.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
from minio.error import S3Error

from components.common.settings import SettingsError, StorageSettings, load_settings
from components.common.storage import (
    CorruptVersionError,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    fetch_version,
    latest_version,
    list_versions,
    open_store,
    publish_dir,
    publish_version,
    read_manifest,
    verify_version,
)
from tests.support import free_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(StorageSettings(root=str(tmp_path / "store")))
    return open_store(request.getfixturevalue("s3_settings"))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_dir(root: Path) -> Path:
    files = {"config.json": b'{"a": 1}', "weights/model.bin": os.urandom(3 * 1024 * 1024 + 7),
             "weights/sub/ü.txt": "naïve".encode(), "empty.txt": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ---- objects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a.txt", "dir/ü ñ/файл.bin", "spaces and +plus&=.txt", "深/層/キー"])
def test_bytes_round_trip_and_overwrite(store: ObjectStore, key: str) -> None:
    uri = store.uri("objs", key)
    store.put_bytes(uri, b"first")
    assert store.get_bytes(uri) == b"first"
    store.put_bytes(uri, b"second \x00\xff")
    assert store.get_bytes(uri) == b"second \x00\xff"
    assert store.exists(uri)
    assert store.list(store.uri("objs"), recursive=True) == [uri]


def test_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024 + 3))  # more than one streamed chunk
    uri = store.uri("files", "big.bin")
    store.put_file(src, uri)
    dest = store.get_file(uri, tmp_path / "out" / "nested" / "big.bin")
    assert dest.read_bytes() == src.read_bytes()
    assert store.digest(uri) == (hashlib.sha256(src.read_bytes()).hexdigest(), src.stat().st_size)
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no temp file left beside it


def test_list_prefix_recursive_and_not(store: ObjectStore) -> None:
    for key in ["a/1.txt", "a/b/2.txt", "a/b/c/3.txt", "a.txt", "ab/x.txt"]:
        store.put_bytes(store.uri("L", key), key.encode())
    u = store.uri
    assert store.list(u("L", "a")) == [u("L", "a", "1.txt"), u("L", "a", "b") + "/"]
    assert store.list(u("L", "a") + "/", recursive=True) == [
        u("L", "a", "1.txt"), u("L", "a", "b", "2.txt"), u("L", "a", "b", "c", "3.txt")]
    assert store.list(u("L")) == [u("L", "a.txt"), u("L", "a") + "/", u("L", "ab") + "/"]
    assert store.list(u("nothing-here")) == []


def test_exists_and_delete(store: ObjectStore) -> None:
    one, two = store.uri("D", "x", "one"), store.uri("D", "x", "y", "two")
    store.put_bytes(one, b"1")
    store.put_bytes(two, b"2")
    assert store.exists(one) and store.exists(two)
    assert not store.exists(store.uri("D", "x"))  # a folder is not an object
    store.delete(one)
    assert not store.exists(one) and store.exists(two)
    store.delete(one)  # absent: no error
    store.delete(store.uri("D", "x"), recursive=True)
    assert store.list(store.uri("D"), recursive=True) == []


def test_missing_object_raises_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    uri = store.uri("missing", "thing.bin")
    for call in (store.get_bytes, store.digest, lambda u: store.get_file(u, tmp_path / "d" / "f")):
        with pytest.raises(ObjectNotFound) as err:
            call(uri)
        assert err.value.uri == uri and uri in str(err.value)
        assert isinstance(err.value, StorageError)
    assert not (tmp_path / "d" / "f").exists()
    with pytest.raises(ObjectNotFound):
        store.download_dir(store.uri("missing"), tmp_path / "dl")


def test_folder_upload_download_nested(store: ObjectStore, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "src")
    uris = store.upload_dir(src, store.uri("folders", "ckpt"))
    assert len(uris) == 4 and store.uri("folders", "ckpt", "weights", "sub", "ü.txt") in uris
    out = store.download_dir(store.uri("folders", "ckpt"), tmp_path / "out")
    assert _tree(out) == _tree(src)


# ---- versions -----------------------------------------------------------------------------------


def test_publish_verify_fetch(store: ObjectStore, tmp_path: Path) -> None:
    part = tmp_path / "part-1.parquet"
    part.write_bytes(b"parquet bytes " * 1000)
    prefix = store.uri("datasets", "vqa")
    ref = publish_version(store, prefix, {"part-0.parquet": b"zero", "part-1.parquet": part},
                          metadata={"rows": 2, "source": "test"})
    assert ref.version.startswith("v-") and len(ref.version) == 18
    assert ref.uri == store.uri("datasets", "vqa", ref.version)
    manifest = json.loads(store.get_bytes(ref.uri + "/manifest.json"))
    assert set(manifest) == {"version", "created_at", "files", "metadata"}
    assert manifest["files"]["part-0.parquet"] == {"sha256": hashlib.sha256(b"zero").hexdigest(), "size": 4}
    assert manifest["metadata"] == {"rows": 2, "source": "test"}
    assert verify_version(store, ref.uri) == ref.manifest == read_manifest(store, ref.uri)
    dest = fetch_version(store, ref.uri, tmp_path / "fetched")
    assert _tree(dest) == {"part-0.parquet": b"zero", "part-1.parquet": part.read_bytes(),
                           "manifest.json": (dest / "manifest.json").read_bytes()}
    assert fetch_version(store, ref.uri, dest) == dest  # already there, same manifest: a no-op
    assert [r.uri for r in list_versions(store, prefix)] == [ref.uri]


def test_republish_same_content_is_idempotent(store: ObjectStore, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "ckpt")
    prefix = store.uri("checkpoints", "run1")
    first = publish_dir(store, src, prefix, metadata={"step": 10})
    again = publish_dir(store, src, prefix, metadata={"step": 10})
    assert again == first  # same version, same created_at: nothing rewritten
    assert len(list_versions(store, prefix)) == 1
    (src / "config.json").write_bytes(b"{}")
    changed = publish_dir(store, src, prefix)
    assert changed.version != first.version
    assert _tree(fetch_version(store, changed.uri, tmp_path / "got")) == {
        **_tree(src), "manifest.json": (tmp_path / "got" / "manifest.json").read_bytes()}


def test_explicit_version_with_other_content_refused(store: ObjectStore) -> None:
    prefix = store.uri("datasets", "named")
    publish_version(store, prefix, {"a": b"1"}, version="step-1")
    with pytest.raises(StorageError, match="step-1 already exists with other content"):
        publish_version(store, prefix, {"a": b"2"}, version="step-1")
    assert store.get_bytes(store.uri("datasets", "named", "step-1", "a")) == b"1"


def test_tampered_part_refused(store: ObjectStore, tmp_path: Path) -> None:
    ref = publish_version(store, store.uri("ds"), {"part-0": b"good", "sub/part-1": b"good too"})
    store.put_bytes(ref.uri + "/sub/part-1", b"evil too")
    with pytest.raises(CorruptVersionError) as err:
        verify_version(store, ref.uri)
    assert ref.uri in str(err.value) and "'sub/part-1'" in str(err.value)
    with pytest.raises(CorruptVersionError, match="sub/part-1"):
        fetch_version(store, ref.uri, tmp_path / "fetches" / "dest")
    assert list((tmp_path / "fetches").iterdir()) == []  # no partly-filled destination, no temp sibling
    store.delete(ref.uri + "/part-0")
    with pytest.raises(CorruptVersionError, match="'part-0' is missing"):
        verify_version(store, ref.uri)


def test_missing_manifest_means_no_version(store: ObjectStore, tmp_path: Path) -> None:
    prefix = store.uri("datasets", "crashed")
    done = publish_version(store, prefix, {"p": b"ok"}, version="v1")
    store.put_bytes(store.uri("datasets", "crashed", "v2", "p"), b"parts only, the writer died")
    half = store.uri("datasets", "crashed", "v2")
    for call in (verify_version, read_manifest):
        with pytest.raises(CorruptVersionError, match="has no manifest.json: the version was never completed"):
            call(store, half)
    with pytest.raises(CorruptVersionError, match=half):
        fetch_version(store, half, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert [r.version for r in list_versions(store, prefix)] == ["v1"]
    assert latest_version(store, prefix) == done


def test_versions_listed_oldest_to_newest(store: ObjectStore) -> None:
    prefix = store.uri("checkpoints", "run2")
    assert latest_version(store, prefix) is None
    for name in ["step-30", "step-100", "final"]:
        publish_version(store, prefix, {"w": name.encode()}, version=name)
    assert [r.version for r in list_versions(store, prefix)] == ["step-30", "step-100", "final"]
    assert latest_version(store, prefix).version == "final"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["manifest.json", "../up", "a//b", ""])
def test_bad_part_names_refused(store: ObjectStore, name: str) -> None:
    with pytest.raises(StorageError, match="bad part name"):
        publish_version(store, store.uri("bad"), {name: b"x"})
    assert store.list(store.uri("bad"), recursive=True) == []


# ---- settings and servers -------------------------------------------------------------------------


def test_s3_uri_without_endpoint_is_a_settings_error() -> None:
    store = open_store(StorageSettings(root="s3://bucket/prefix"))  # lazy: no client made yet
    assert store.uri("datasets", "x") == "s3://bucket/prefix/datasets/x"
    with pytest.raises(SettingsError) as err:
        store.put_bytes(store.uri("k"), b"x")
    for var in ("DMMS_STORAGE__ENDPOINT", "DMMS_STORAGE__ACCESS_KEY", "DMMS_STORAGE__SECRET_KEY"):
        assert var in str(err.value)
    with pytest.raises(SettingsError, match="DMMS_STORAGE__ENDPOINT"):
        open_store(StorageSettings()).exists("s3://other/key")


def test_open_store_takes_whole_settings_and_file_uris(tmp_path: Path) -> None:
    store = open_store(load_settings(storage={"root": f"file://{tmp_path}/root"}))
    uri = store.uri("a", "b.txt")
    assert uri == f"file://{tmp_path}/root/a/b.txt"
    store.put_bytes(uri, b"hi")
    assert (tmp_path / "root" / "a" / "b.txt").read_bytes() == b"hi"
    assert store.list(store.uri("a")) == [uri]


def test_wrong_credentials_refused(s3_server, s3_settings: StorageSettings) -> None:
    bucket = s3_settings.root.removeprefix("s3://")
    with pytest.raises(S3Error) as err:
        s3_server.client(secret_key="wrong-secret").list_objects(bucket).__next__()
    assert err.value.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
    bad = open_store(StorageSettings.model_validate({**s3_settings.model_dump(), "secret_key": "wrong-secret"}))
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        bad.put_bytes(bad.uri("k"), b"x")
    assert not open_store(s3_settings).exists(bad.uri("k"))


def test_missing_bucket_names_the_root_setting(s3_settings: StorageSettings) -> None:
    store = open_store(s3_settings)
    with pytest.raises(StorageError, match="does not exist.*DMMS_STORAGE__ROOT"):
        store.put_bytes("s3://no-such-bucket-dmms/k", b"x")


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    settings = StorageSettings(root="s3://bkt", endpoint=f"127.0.0.1:{free_port()}", access_key="a",
                               secret_key="b", retries=1, timeout_s=5)
    with pytest.raises(StorageError, match=f"S3 endpoint {settings.endpoint} failed"):
        open_store(settings).get_bytes("s3://bkt/k")
    with pytest.raises(StorageError, match="bad S3 URI 's3://B_/k'"):
        open_store(settings).get_bytes("s3://B_/k")


def test_transient_errors_retried_a_bounded_number_of_times() -> None:
    """A loopback HTTP server that always answers 503 SlowDown: a real S3 server cannot be made to
    fail on demand, so this stands in for an overloaded one. Each request is tried 1 + retries times."""
    seen: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            body = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = StorageSettings(root="s3://bkt", endpoint=f"127.0.0.1:{server.server_port}",
                                   access_key="a", secret_key="b", region="us-east-1", retries=2)
        with pytest.raises(StorageError, match="s3://bkt/k: S3 error SlowDown"):
            open_store(settings).get_bytes("s3://bkt/k")
    finally:
        server.shutdown()
        server.server_close()
    assert len(seen) == 3 and all(p.startswith("/bkt/k") for p in seen)
