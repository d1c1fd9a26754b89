"""One model turn for the direct and RAG baselines: a local checkpoint or an OpenAI-compatible endpoint.

Why here: the baselines need exactly one generation per sample, from any model the user names —
a checkpoint folder (transformers, CPU or GPU, loaded by :mod:`components.agent.models`) or a chat
endpoint (vLLM server, hosted model) through the shared :class:`ChatClient`. Messages come in the
agent protocol's chat form (``initial_messages``: the input image as a ``{"type": "image"}`` element
before the text); each backend puts the image in the way it needs.

    gen = open_generator(ModelSpec(backend="local", name=".dmms/models/tiny"), settings)
    text = await gen.generate(messages, pil_image)
    await gen.aclose()
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any, Literal, Protocol

from PIL import Image
from pydantic import BaseModel, Field

from components.agent.generators.openai import restore_stop
from components.agent.protocol import STOP_STRINGS
from components.common.llm import ChatClient, image_part
from components.common.settings import LLMEndpointSettings, Settings

log = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """Which model answers: a checkpoint (local) or a served model name at an endpoint (openai)."""

    backend: Literal["local", "openai"] = "local"
    name: str = Field(description="Checkpoint folder / hub id (local), or the served model name (openai).")
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://vllm:8000/v1.")

    @property
    def label(self) -> str:
        return self.name if self.backend == "local" else f"{self.name}@{self.base_url}"


class Generator(Protocol):
    name: str

    async def generate(self, messages: list[dict[str, Any]], image: Image.Image) -> str: ...

    async def aclose(self) -> None: ...


def _with_image(messages: list[dict[str, Any]], image_element: dict[str, Any]) -> list[dict[str, Any]]:
    out = copy.deepcopy(messages)
    for msg in out:
        if isinstance(msg.get("content"), list):
            msg["content"] = [image_element if part.get("type") == "image" else part for part in msg["content"]]
    return out


class LocalGenerator:
    """A transformers checkpoint in this process; generation runs in a worker thread, one at a time."""

    def __init__(self, path: str, settings: Settings, max_new_tokens: int | None = None,
                 loaded: tuple[Any, Any] | None = None):
        from components.agent.models import load_model_and_processor

        self.name = f"local:{path}"
        # ``loaded``: a (model, processor) already in memory (the agent mode's), not loaded twice.
        self.model, self.processor = loaded or load_model_and_processor(path, settings.model)
        self.max_new_tokens = max_new_tokens or settings.model.max_new_tokens
        self.seed = settings.model.seed
        self._lock = asyncio.Lock()

    def _generate_sync(self, messages: list[dict[str, Any]], image: Image.Image) -> str:
        import torch

        msgs = _with_image(messages, {"type": "image", "image": image.convert("RGB")})
        inputs = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        torch.manual_seed(self.seed)
        with torch.no_grad():  # greedy: an evaluation must be repeatable
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      stop_strings=list(STOP_STRINGS), tokenizer=self.processor.tokenizer)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, skip_special_tokens=True)

    async def generate(self, messages: list[dict[str, Any]], image: Image.Image) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._generate_sync, messages, image)

    async def aclose(self) -> None:
        return None


class OpenAIGenerator:
    """A model served behind an OpenAI-compatible chat endpoint (timeouts and retries: ChatClient)."""

    def __init__(self, endpoint: LLMEndpointSettings):
        self.name = f"openai:{endpoint.model}"
        self._client = ChatClient(endpoint)
        self.max_tokens = endpoint.max_tokens

    async def generate(self, messages: list[dict[str, Any]], image: Image.Image) -> str:
        msgs = _with_image(messages, image_part(image.convert("RGB")))
        result = await self._client.complete(msgs, max_tokens=self.max_tokens, temperature=0.0,
                                             stop=list(STOP_STRINGS))
        # Servers drop the stop string; put back the one the turn ended on so the parser sees it
        # (the agent loop's OpenAI generator does the same, with the same function).
        text, _stop = restore_stop(result.text, result.finish_reason, STOP_STRINGS)
        return text

    async def aclose(self) -> None:
        await self._client.aclose()


def endpoint_of(spec: ModelSpec, settings: Settings) -> LLMEndpointSettings:
    """The endpoint of an openai spec: timeouts, retries and key from ``settings.evaluate.endpoint``."""
    if not spec.base_url:
        raise ValueError("an openai model needs its endpoint: pass --endpoint http://host:port/v1")
    return settings.evaluate.endpoint.model_copy(update={"base_url": spec.base_url, "model": spec.name})


def open_generator(spec: ModelSpec, settings: Settings, loaded: tuple[Any, Any] | None = None) -> Generator:
    """The one-turn generator for ``spec`` (``loaded``: reuse a model already in memory)."""
    if spec.backend == "local":
        return LocalGenerator(spec.name, settings, loaded=loaded)
    return OpenAIGenerator(endpoint_of(spec, settings))
