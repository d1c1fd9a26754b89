"""The object store: one small API over ``s3://bucket/key`` and local paths, with the same semantics.

Why: datasets and checkpoints live in a local folder on one machine (the embedded default) and in
MinIO/SeaweedFS on Kubernetes (docs/design.md §5, §6). Every step reads and writes them through this
module, so a URI is all a step needs, and a version without a ``manifest.json`` never exists.

    store = open_store(load_settings())          # or open_store(settings.storage)
    ref = publish_dir(store, "ckpt/", store.uri("checkpoints", "run1"), metadata={"step": 50})
    path = fetch_version(store, latest_version(store, store.uri("checkpoints", "run1")).uri, "out")

A URI is ``s3://bucket/key`` or a local path (relative, absolute or ``file://``). The S3 client is
made on first use of an ``s3://`` URI from ``StorageSettings`` (``DMMS_STORAGE__*``). Local writes
are atomic (temp file + ``os.replace``). Tests: ``pytest tests/unit/common/test_storage.py``.

The package: :mod:`.store` (the ObjectStore over both backends) and :mod:`.versions` (publish,
verify, fetch, list versions).
"""

from components.common.storage.store import *  # noqa: F403
from components.common.storage.versions import *  # noqa: F403
