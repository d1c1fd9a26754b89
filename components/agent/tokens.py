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
    def start(cls, processor: Any, messages: list[dict[str, Any]], images: list[Any]) -> TokenConversation:
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
