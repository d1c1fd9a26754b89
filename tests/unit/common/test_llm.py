"""The shared OpenAI-compatible client against a real HTTP server on loopback (see
tests/fixtures/openai_server.py for why the server is a stand-in)."""

import httpx
import pytest
from PIL import Image

from components.common.llm import ChatClient, LLMError, image_part
from components.common.settings import LLMEndpointSettings
from tests.fixtures.openai_server import Reply
from tests.support import free_port


def _endpoint(url, **kw):
    return LLMEndpointSettings(base_url=url, model="judge-x", api_key="k-123", **kw)


async def test_complete_sends_model_messages_and_bearer(openai_server):
    openai_server.responder = lambda body: "echo:" + body["messages"][-1]["content"]
    async with ChatClient(_endpoint(openai_server.base_url)) as client:
        result = await client.complete([{"role": "user", "content": "hi"}], max_tokens=5, stop=["</answer>"])
    assert result.text == "echo:hi"
    assert result.finish_reason == "stop"
    sent = openai_server.requests[0]
    assert sent["authorization"] == "Bearer k-123"
    assert sent["body"]["model"] == "judge-x"
    assert sent["body"]["max_tokens"] == 5
    assert sent["body"]["stop"] == ["</answer>"]


async def test_retries_transient_errors_then_succeeds(openai_server):
    openai_server.replies.extend([Reply(status=503), Reply(status=429), Reply(text="fine")])
    async with ChatClient(_endpoint(openai_server.base_url, max_retries=3), backoff_s=0.01) as client:
        result = await client.complete([{"role": "user", "content": "x"}])
    assert result.text == "fine"
    assert len(openai_server.requests) == 3


async def test_gives_up_after_bounded_retries(openai_server):
    openai_server.replies.extend([Reply(status=502)] * 5)
    async with ChatClient(_endpoint(openai_server.base_url, max_retries=2), backoff_s=0.01) as client:
        with pytest.raises(LLMError, match="gave up after 3 attempts"):
            await client.complete([{"role": "user", "content": "x"}])
    assert len(openai_server.requests) == 3


@pytest.mark.parametrize("status", [500, 504])
async def test_500_and_504_are_not_retried(openai_server, status):
    """A 500 is a bug and a 504 a deadline already spent: asking again doubles the work."""
    openai_server.replies.extend([Reply(status=status)] * 3)
    async with ChatClient(_endpoint(openai_server.base_url, max_retries=3), backoff_s=0.01) as client:
        with pytest.raises(LLMError, match=f"HTTP {status}"):
            await client.complete([{"role": "user", "content": "x"}])
    assert len(openai_server.requests) == 1


async def test_read_timeout_is_not_retried(openai_server):
    openai_server.replies.extend([Reply(text="late", delay_s=2.0)] * 2)
    async with ChatClient(_endpoint(openai_server.base_url, timeout_s=0.3, max_retries=2), backoff_s=0.01) as client:
        with pytest.raises(LLMError, match="Timeout"):
            await client.complete([{"role": "user", "content": "x"}])
    assert len(openai_server.requests) == 1


async def test_client_errors_are_not_retried(openai_server):
    openai_server.replies.append(Reply(status=400))
    async with ChatClient(_endpoint(openai_server.base_url, max_retries=3), backoff_s=0.01) as client:
        with pytest.raises(LLMError, match="HTTP 400") as info:
            await client.complete([{"role": "user", "content": "x"}])
    assert info.value.status == 400
    assert len(openai_server.requests) == 1


async def test_timeout_is_enforced(openai_server):
    openai_server.replies.append(Reply(text="late", delay_s=2.0))
    async with ChatClient(_endpoint(openai_server.base_url, timeout_s=0.3, max_retries=0)) as client:
        with pytest.raises(LLMError, match="Timeout"):
            await client.complete([{"role": "user", "content": "x"}])


async def test_unreachable_endpoint_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with ChatClient(_endpoint(url, max_retries=1), backoff_s=0.01) as client:
        with pytest.raises(LLMError, match="127.0.0.1"):
            await client.complete([{"role": "user", "content": "x"}])


def test_unconfigured_endpoint_names_the_variable():
    with pytest.raises(LLMError, match="DMMS_JUDGE__BASE_URL"):
        ChatClient(LLMEndpointSettings())


def test_image_part_is_a_data_url():
    part = image_part(Image.new("RGB", (4, 4), "red"))
    assert part["type"] == "image_url"
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    jpeg = image_part(b"\xff\xd8\xff\xe0rest")
    assert jpeg["image_url"]["url"].startswith("data:image/jpeg;base64,")


async def test_unexpected_shape_is_an_error():
    app_transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"nope": 1}))
    async with ChatClient(_endpoint("http://x/v1"), transport=app_transport) as client:
        with pytest.raises(LLMError, match="unexpected completion shape"):
            await client.complete([{"role": "user", "content": "x"}])
