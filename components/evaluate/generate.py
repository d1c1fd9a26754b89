"""One model turn for the direct and RAG baselines: a local checkpoint or an OpenAI-compatible endpoint.

Why here: the baselines need exactly one generation per sample, from any model the user names —
a checkpoint folder (transformers, CPU or GPU) or a chat endpoint (vLLM server, hosted model). Both
go through the agent's own generator backends (``components/agent/generators``), so the baselines
and agent mode decode alike. Messages come in the
agent protocol's chat form (``initial_messages``: the input image as a ``{"type": "image"}`` element
before the text); each backend puts the image in the way it needs.

    gen = open_generator(ModelSpec(backend="local", name=".dmms/models/tiny"), settings)
    text = await gen.generate(messages, pil_image)
    await gen.aclose()
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Literal, Protocol

from PIL import Image
from pydantic import BaseModel, Field

from components.agent.generators.base import Batcher, GenRequest
from components.agent.protocol import STOP_STRINGS, with_stop_string
from components.agent.tokens import TokenConversation
from components.common.llm import LLMError
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


class BaselineGenerator:
    """One model turn per call through the AGENT's generator backends (one implementation of each:
    the same vision-token suppression, stop handling and greedy decoding as agent mode), batched
    across concurrent samples by the agent's :class:`Batcher`."""

    def __init__(self, backend: Any, max_new_tokens: int, max_batch: int = 16):
        self.backend = backend
        self.name = getattr(backend, "name", "generator")
        self.max_new_tokens = max_new_tokens
        self._batcher = Batcher(backend, max_batch=max_batch)

    async def generate(self, messages: list[dict[str, Any]], image: Image.Image) -> str:
        image = image.convert("RGB")
        processor = getattr(self.backend, "processor", None)
        conv = TokenConversation.start(processor, messages, [image]) if processor is not None else None
        out = await self._batcher.submit(GenRequest(
            prompt_ids=conv.ids if conv else None, mm_inputs=conv.mm_inputs if conv else None,
            images=[image], messages=copy.deepcopy(messages), max_new_tokens=self.max_new_tokens,
            stop=STOP_STRINGS, temperature=0.0))  # greedy: an evaluation must be repeatable
        if out.error is not None:
            raise LLMError(f"{self.name}: {out.error}")
        return with_stop_string(out.text, out.stop)

    async def aclose(self) -> None:
        await self._batcher.aclose()
        await self.backend.aclose()


def endpoint_of(spec: ModelSpec, settings: Settings) -> LLMEndpointSettings:
    """The endpoint of an openai spec: timeouts, retries and key from ``settings.evaluate.endpoint``."""
    if not spec.base_url:
        raise ValueError("an openai model needs its endpoint: pass --endpoint http://host:port/v1")
    return settings.evaluate.endpoint.model_copy(update={"base_url": spec.base_url, "model": spec.name})


def open_generator(spec: ModelSpec, settings: Settings, loaded: tuple[Any, Any] | None = None) -> Generator:
    """The one-turn generator for ``spec`` (``loaded``: reuse a model already in memory)."""
    from components.agent.generators.local import LocalGenerator
    from components.agent.generators.openai import OpenAIGenerator

    if spec.backend == "local":
        backend = (LocalGenerator(*loaded, seed=settings.model.seed) if loaded
                   else LocalGenerator.load(spec.name, settings.model))
        backend.name = f"local:{spec.name}"
        return BaselineGenerator(backend, settings.model.max_new_tokens, settings.evaluate.concurrency)
    endpoint = endpoint_of(spec, settings)
    return BaselineGenerator(OpenAIGenerator(endpoint, concurrency=settings.evaluate.concurrency),
                             endpoint.max_tokens, settings.evaluate.concurrency)
