"""The image frame the model sees: the same size as the processor's own resize, boxes moved between it
and the original image, boxes read from the model's text, the size stated in v2/t2 prompts only.

Run: ``.venv/bin/python -m pytest -q tests/unit/agent/test_frame.py``.
"""

from __future__ import annotations

import pytest
from PIL import Image

from components.agent.frame import Frame, parse_box, processor_pixels, stated_size, unstated
from components.agent.protocol import initial_messages, render_initial_user
from components.agent.tiny import make_processor, train_tokenizer


@pytest.fixture(scope="module")
def processor():
    return make_processor(train_tokenizer("a tiny corpus of words\n" * 20, 300), 12544)


@pytest.mark.parametrize("size", [(256, 256), (512, 300), (90, 400), (1000, 37)])
def test_the_frame_is_what_the_processor_feeds_the_model(processor, size):
    grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0]
    seen = (int(grid[2]) * 14, int(grid[1]) * 14)  # (width, height) in pixels the patches cover
    frame = Frame.for_model(size, processor, max_pixels=10 ** 9)  # the processor's budget wins
    assert frame.size == seen and frame.original == size
    assert Frame.of(size, 12544).size == seen  # and settings alone give the same frame
    assert processor_pixels(processor) == (3136, 12544, 28)


def test_boxes_move_between_the_frame_and_the_original():
    frame = Frame.of((256, 512), 12544)
    assert frame.width % 28 == 0 and frame.height % 28 == 0 and frame.width * frame.height <= 12544
    assert frame.size == (56, 140)  # the aspect ratio only roughly kept: the 28-pixel grid rounds it
    box = frame.to_pixels([0, 0, frame.width / 2, frame.height / 2])
    assert box == pytest.approx([0, 0, 128, 256])
    assert frame.from_pixels([0, 0, 128, 256]) == [0, 0, round(frame.width / 2), round(frame.height / 2)]
    back = frame.to_pixels(frame.from_pixels([40, 100, 200, 300]))
    assert back == pytest.approx([40, 100, 200, 300], abs=256 / frame.width)  # within one frame pixel


@pytest.mark.parametrize("region,box", [
    ([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]), ("[10, 20, 30.5, 40]", [10.0, 20.0, 30.5, 40.0]),
    ("(1,2,3,4)", [1.0, 2.0, 3.0, 4.0]), ("the left half", None), ([1, 2, 3], None), ("[1, 2, x, 4]", None),
    (None, None)])
def test_a_box_is_read_from_a_list_or_from_text(region, box):
    assert parse_box(region) == box


@pytest.mark.parametrize("version", ["v2", "t2"])
def test_v2_and_t2_state_the_frame_and_v1_t1_do_not(version):
    text = render_initial_user("Who built this?", version, image_size=(112, 84))
    assert stated_size(text) == (112, 84) and "Question: Who built this?" in text
    assert unstated(text) == render_initial_user("Who built this?", version)
    old = render_initial_user("Who built this?", version[0] + "1", image_size=(112, 84))
    assert stated_size(old) is None
    user = initial_messages("Who built this?", version, image_size=(112, 84))[1]
    assert user["content"][0] == {"type": "image"} and stated_size(user["content"][1]["text"]) == (112, 84)
