"""Token-space conversation building: the prompt once, model tokens as generated, tool turns appended.

Why: GRPO trains on exactly the tokens the policy produced. Re-tokenising the model's text can
split it differently from how it was sampled (and then logprobs and the loss refer to tokens the
model never chose), so the conversation is built in token space:

- the prompt (system + first user turn with the input image) is built ONCE with the processor's
  chat template, image pads included: ``prompt_ids`` equal the processor's tokenisation of the
  rendered prompt, which TRL's GRPO re-renders to rebuild pixel values;
- each model turn's ids are appended as generated (mask 1, the backend's logprobs);
- each user turn (``<information>…``) is appended (mask 0, logprob 0.0) as the ids of exactly the
  text the chat template renders between the model's text and the next assistant header, found by
  rendering the conversation with and without the new turn and taking the suffix (asserted to be a
  prefix extension; nothing template-specific is hard-coded). For Qwen that text is
  ``<|im_end|>\\n<|im_start|>user\\n<information>…<|im_end|>\\n<|im_start|>assistant\\n``; the leading
  end-of-turn token is left out when the model generated it itself.
- a model turn that stopped on a stop string (``</answer>``) rather than on the end-of-turn token
  gets the end-of-turn token appended with mask 0 at the end of the trajectory (:meth:`close`), so
  every completion ends with the end-of-turn token as TRL expects of a finished completion.

Import-only; tests: ``.venv/bin/python -m pytest -q tests/unit/agent/test_loop.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    """The chat template does not render the conversation as a prefix extension."""


_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _render(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def encode_prompt(processor: Any, messages: list[dict[str, Any]], images: list[Any]) -> tuple[list[int], dict]:
    """Prompt ids (image pads expanded) and the image tensors (pixel_values, image_grid_thw)."""
    text = _render(processor, messages, True)
    if images:
        enc = processor(text=[text], images=images, return_tensors="pt")
        mm = {k: v for k, v in enc.items() if k not in _PER_TOKEN}
    else:
        enc = _tokenizer(processor)([text], return_tensors="pt", add_special_tokens=False)
        mm = {}
    return enc["input_ids"][0].tolist(), mm


def user_turn_text(processor: Any, messages: list[dict[str, Any]], raw: str, user: str) -> str:
    """The text the template renders after the model's ``raw`` turn up to the next assistant header,
    for a new user turn ``user``: ``render(messages + [assistant, user], gen) - render(messages) - raw``."""
    before = _render(processor, messages, True)
    with_model = _render(processor, [*messages, {"role": "assistant", "content": raw}], False)
    with_user = _render(processor, [*messages, {"role": "assistant", "content": raw},
                                    {"role": "user", "content": user}], True)
    if not with_model.startswith(before + raw):
        raise TemplateError("the chat template does not render the assistant turn as prompt + text + tail")
    if not with_user.startswith(with_model):
        raise TemplateError("the chat template does not render a new user turn as a suffix of the conversation")
    return with_model[len(before) + len(raw):] + with_user[len(with_model):]


def end_of_turn_text(processor: Any, messages: list[dict[str, Any]], raw: str) -> str:
    """The text that closes an assistant turn, up to and including the tokenizer's eos token
    (``<|im_end|>`` for Qwen), as the template renders it."""
    before = _render(processor, messages, True)
    with_model = _render(processor, [*messages, {"role": "assistant", "content": raw}], False)
    if not with_model.startswith(before + raw):
        raise TemplateError("the chat template does not render the assistant turn as prompt + text + tail")
    tail = with_model[len(before) + len(raw):]
    eos = _tokenizer(processor).eos_token
    return tail[: tail.index(eos) + len(eos)] if eos and eos in tail else tail.rstrip()


class PromptEncoder:
    """:func:`encode_prompt` with each distinct image prepared once (the agent loop keeps one per run).

    Why: the G generations of a GRPO prompt share one image, and the processor's image work (resize,
    normalise, patchify: a dozen torch ops on a small tensor) is nearly all of a prompt's cost:
    ~1.5 ms on a quiet core, 25-30 ms when the cores are busy, as torch's intra-op threads wait for
    one another (measured on 2 cores beside the tool-server, bench/rollout.py), against ~0.1 ms for
    the text. The first prompt with an image goes through the processor whole; later prompts with
    the same image (``key``: its sha256) reuse its tensors and tokenise their own text with the image
    token expanded the number of times the processor expanded it — checked against the processor's
    own ids on every first sight, so a processor that expands differently is simply never shortcut.
    """

    def __init__(self, processor: Any):
        self.processor = processor
        tok = _tokenizer(processor)
        self._image_token: str | None = getattr(processor, "image_token", None)
        self._image_id = tok.convert_tokens_to_ids(self._image_token) if self._image_token else None
        self._images: dict[str, tuple[dict[str, Any], int]] = {}  # key -> (image tensors, pads)

    def encode(self, messages: list[dict[str, Any]], images: list[Any], key: str | None) -> tuple[list[int], dict]:
        """``encode_prompt(processor, messages, images)``, reusing the tensors of image ``key``."""
        text = _render(self.processor, messages, True)
        one_image = (key is not None and len(images) == 1 and self._image_id is not None
                     and text.count(self._image_token) == 1)
        if not one_image:
            return encode_prompt(self.processor, messages, images)
        hit = self._images.get(key)
        if hit is not None:
            mm, pads = hit
            return self._expanded_ids(text, pads), mm
        ids, mm = encode_prompt(self.processor, messages, images)
        pads = ids.count(self._image_id)
        if self._expanded_ids(text, pads) == ids:
            self._images[key] = (mm, pads)
        return ids, mm

    def _expanded_ids(self, text: str, pads: int) -> list[int]:
        token = self._image_token or ""
        return _tokenizer(self.processor)([text.replace(token, token * pads, 1)])["input_ids"][0]


@dataclass
class TokenConversation:
    """prompt_ids + completion ids with their mask (1 model, 0 tool/template) and logprobs."""

    processor: Any
    prompt_ids: list[int]
    mm_inputs: dict[str, Any] = field(default_factory=dict)
    completion_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    has_logprobs: bool = True
    _open_turn: bool = False  # the last model turn has not received its end-of-turn token yet

    @classmethod
    def start(cls, processor: Any, messages: list[dict[str, Any]], images: list[Any],
              encoder: PromptEncoder | None = None, image_key: str | None = None) -> TokenConversation:
        """The conversation of the prompt ``messages``; ``encoder`` (with the image's ``image_key``)
        reuses the image tensors of earlier prompts with the same image."""
        if encoder is not None:
            ids, mm = encoder.encode(messages, images, image_key)
        else:
            ids, mm = encode_prompt(processor, messages, images)
        return cls(processor=processor, prompt_ids=ids, mm_inputs=mm)

    @property
    def ids(self) -> list[int]:
        """The whole sequence to continue from."""
        return self.prompt_ids + self.completion_ids

    @property
    def eos_id(self) -> int | None:
        return _tokenizer(self.processor).eos_token_id

    def encode(self, text: str) -> list[int]:
        return _tokenizer(self.processor).encode(text, add_special_tokens=False)

    def add_model(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Append a model turn's ids as generated (mask 1)."""
        if logprobs is None or len(logprobs) != len(ids):
            self.has_logprobs = False
            logprobs = [0.0] * len(ids)
        self.completion_ids += ids
        self.mask += [1] * len(ids)
        self.logprobs += [float(x) for x in logprobs]
        self._open_turn = not ids or ids[-1] != self.eos_id

    def _add_env(self, ids: list[int]) -> None:
        self.completion_ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def add_user(self, messages: list[dict[str, Any]], raw: str, user: str) -> None:
        """Append the template's text of a new user turn after the model's turn ``raw``.

        ``messages`` is the conversation BEFORE the model's turn."""
        text = user_turn_text(self.processor, messages, raw, user)
        eos = _tokenizer(self.processor).eos_token
        if not self._open_turn and eos and text.startswith(eos):
            text = text[len(eos):]
        self._add_env(self.encode(text))
        self._open_turn = False

    def close(self, messages: list[dict[str, Any]], raw: str) -> None:
        """End the trajectory: append the end-of-turn token(s) if the model did not generate them."""
        if self._open_turn:
            self._add_env(self.encode(end_of_turn_text(self.processor, messages, raw)))
        self._open_turn = False
