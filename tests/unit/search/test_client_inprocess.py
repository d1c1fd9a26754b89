"""The in-process client drives the same app (start-up, routes, errors) through httpx.ASGITransport."""

from __future__ import annotations

import asyncio

from components.search.app import create_app
from components.search.client import in_process_client
from tests.fixtures.toolserver import TOKEN, tool_settings


async def test_in_process_client(toolserver_corpus, tmp_path):
    _corpus, index, entities = toolserver_corpus
    app = create_app(tool_settings(tmp_path), index)
    async with in_process_client(app, token=TOKEN) as client:
        for _ in range(100):  # the index loads in the background at start-up
            resp, err = await client.safe_text_search(f"{entities[7].name} city", top_k=2)
            if err is None or "not_ready" not in err:
                break
            await asyncio.sleep(0.05)
        assert err is None and resp.results[0].doc_id == entities[7].doc_id
        none, err = await client.safe_image_search(b"nope")
        assert none is None and "bad_image" in err
    async with in_process_client(create_app(tool_settings(tmp_path), index), token="wrong") as client:
        none, err = await client.safe_text_search("x")
        assert none is None and "401" in err
