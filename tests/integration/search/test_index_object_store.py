"""The index lives in the object store on the cluster: build from an ``s3://`` corpus into an
``s3://`` index on a real S3 server (SeaweedFS on loopback), then serve it and search it; rebuild
it under traffic and reload: zero failed requests, the new version served, the old one readable."""

import threading
import time

import httpx
import pytest
from PIL import Image

from components.common.settings import Settings
from components.common.storage import join_uri, open_store
from components.search.client import encode_image
from components.search.index import ALIAS, MANIFEST, IndexFormatError, build_index, load_index
from tests.fixtures.toolserver import TOKEN, make_corpus, start_toolserver


@pytest.fixture
def s3_tools_settings(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    storage = s3_server.settings(bucket).model_dump()
    settings = Settings(profile="tiny", storage=storage,
                        tools={"token": TOKEN, "cache_url": f"sqlite:///{tmp_path / 'cache.db'}"})
    return settings, f"s3://{bucket}"


def test_build_from_and_into_the_object_store_then_serve(s3_tools_settings, tmp_path):
    settings, root = s3_tools_settings
    entities = make_corpus(tmp_path / "corpus", n_docs=12, n_images=4)
    store = open_store(settings)
    store.upload_dir(tmp_path / "corpus", join_uri(root, "corpus"))
    index_uri = join_uri(root, "index", "current")

    manifest = build_index(join_uri(root, "corpus"), index_uri, settings)
    assert manifest["uri"] == join_uri(index_uri, "versions", manifest["version"])
    assert store.exists(join_uri(manifest["uri"], MANIFEST)) and store.exists(join_uri(index_uri, ALIAS))
    loaded = load_index(index_uri, settings, cache_dir=tmp_path / "cache")
    assert loaded.text.num_docs == 12 and len(loaded.images) == 4

    target = next(e for e in entities if e.image_id)
    with start_toolserver(settings, index_uri) as (url, _app):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        text = httpx.post(f"{url}/v1/text_search", json={"query": f"{target.name} born"},
                          headers=headers, timeout=30).json()
        assert text["results"][0]["doc_id"] == target.doc_id
        img = Image.open(tmp_path / "corpus" / target.image_path).convert("RGB").resize((180, 180))
        found = httpx.post(f"{url}/v1/image_search", json={"image_b64": encode_image(img)},
                           headers=headers, timeout=30).json()
        assert found["results"][0]["doc_id"] == target.doc_id


def test_an_index_without_its_manifest_is_refused(s3_tools_settings, tmp_path):
    """A crash mid-upload leaves parts but no manifest.json (it is uploaded last): never served."""
    settings, root = s3_tools_settings
    make_corpus(tmp_path / "corpus", n_docs=6, n_images=2)
    index_uri = join_uri(root, "index", "half")
    manifest = build_index(str(tmp_path / "corpus"), index_uri, settings)
    store = open_store(settings)
    store.delete(join_uri(manifest["uri"], MANIFEST))
    with pytest.raises(IndexFormatError, match="not a built index"):
        load_index(index_uri, settings, cache_dir=tmp_path / "cache")


def test_rebuild_under_traffic_then_reload_fails_no_request(s3_tools_settings, tmp_path):
    settings, root = s3_tools_settings
    entities = make_corpus(tmp_path / "c1", n_docs=12, n_images=4)
    index_uri = join_uri(root, "indexes", "world")
    first = build_index(str(tmp_path / "c1"), index_uri, settings)
    make_corpus(tmp_path / "c2", n_docs=16, n_images=4, seed=11)  # another corpus: another version
    headers = {"Authorization": f"Bearer {TOKEN}"}
    target = entities[0]
    statuses: list[int] = []
    stop = threading.Event()

    with start_toolserver(settings, index_uri) as (url, _app):
        assert httpx.get(f"{url}/readyz", timeout=10).json()["index_version"] == first["version"]

        def traffic() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    statuses.append(client.post(url + "/v1/text_search", json={"query": f"{target.name} born"},
                                                headers=headers).status_code)

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        second = build_index(str(tmp_path / "c2"), index_uri, settings)  # while serving
        assert second["version"] != first["version"]
        served = httpx.get(f"{url}/readyz", timeout=10).json()["index_version"]
        assert served == first["version"]  # nothing changes until a reload
        unauthorised = httpx.post(f"{url}/admin/reload", timeout=60)
        assert unauthorised.status_code == 401
        reloaded = httpx.post(f"{url}/admin/reload", headers=headers, timeout=120).json()
        assert reloaded == {"reloaded": True, "version": second["version"], "uri": second["uri"],
                            "previous": first["version"]}
        again = httpx.post(f"{url}/admin/reload", headers=headers, timeout=60).json()
        assert again["reloaded"] is False
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["index_version"] == second["version"] and ready["docs"] == 16
        before, deadline = len(statuses), time.monotonic() + 60
        while len(statuses) < before + 20 and time.monotonic() < deadline:  # traffic on the new version too
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(30)
    assert len(statuses) > 40 and set(statuses) == {200}, sorted(set(statuses))
    old = load_index(first["uri"], settings, cache_dir=tmp_path / "old")  # the old version stays readable
    assert old.version == first["version"] and old.text.num_docs == 12
