"""SFT rows (components/sft/data.py): rows too long are dropped and counted, never truncated.

Proves: ``row_tokens`` counts what the trainer's collator produces (image pads included); rows
longer than ``max_length - margin`` are dropped and counted, the rest kept whole; no row fits →
an error naming the setting; the counterfactual transform is attached when asked; the
tokenizer corpus carries the rows' text with fresh names, the system prompt once.

Run: ``.venv/bin/python -m pytest -q tests/unit/sft/test_data.py``
"""

from __future__ import annotations

import datasets
import pytest
from PIL import Image

from bench.expert_data import expert_trajectories
from components.agent.models import load_model_and_processor
from components.agent.sft_data import features, rows_from_trajectories
from components.agent.tiny import build_tiny_model
from components.common.settings import load_settings
from components.sft.counterfactual import CounterfactualTransform
from components.sft.data import prepare_rows, row_tokens, tokenizer_corpus


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    settings = load_settings(profile="tiny")
    _, proc = load_model_and_processor(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")), settings.model)
    return proc


@pytest.fixture(scope="module")
def dataset():
    trajs, images = expert_trajectories(8)
    return datasets.Dataset.from_list(rows_from_trajectories(trajs, images), features=features())


def test_row_tokens_match_the_collator(processor, dataset, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor)
    for row in dataset.select(range(2)):
        batch = collator([{"messages": row["messages"], "images": row["images"]}])
        assert row_tokens(processor, row["messages"], row["images"]) == batch["input_ids"].shape[1]


def test_long_rows_are_dropped_and_counted(processor, dataset):
    lengths = [row_tokens(processor, r["messages"], r["images"]) for r in dataset]
    limit = sorted(lengths)[len(lengths) // 2]
    prepared = prepare_rows(dataset, processor, max_length=limit + 10, margin=10)
    assert prepared.dropped_too_long == sum(n > limit for n in lengths) > 0
    assert prepared.rows == len(prepared.dataset) == sum(n <= limit for n in lengths)
    assert prepared.max_tokens == max(lengths)
    assert all(row_tokens(processor, r["messages"], r["images"]) <= limit for r in prepared.dataset)
    assert prepared.dataset.column_names == ["messages", "images", "length"]  # length: the grouped sampler
    assert prepared.dataset["length"] == [n for n in lengths if n <= limit]
    with pytest.raises(ValueError, match="DMMS_SFT__MAX_LENGTH"):
        prepare_rows(dataset, processor, max_length=min(lengths) - 1 + 10, margin=10)


def test_counterfactual_transform_is_attached(processor, dataset):
    prepared = prepare_rows(dataset, processor, max_length=4096, counterfactual_share=1.0)
    assert isinstance(prepared.dataset._format_kwargs.get("transform"), CounterfactualTransform)
    assert prepared.counterfactual_share == 1.0 and prepared.dropped_too_long == 0
    assert isinstance(prepared.dataset[0]["images"][0], Image.Image)
    # what transformers' length-grouped sampler reads, element by element, through the transform
    lengths = prepared.dataset["length"]
    assert [lengths[i] for i in range(len(lengths))] == [row_tokens(processor, r["messages"], r["images"])
                                                         for r in dataset]
    assert prepared.dataset[0]["length"] == lengths[0]


def test_tokenizer_corpus_has_fresh_names_and_one_system_prompt():
    rows = [[{"role": "system", "content": "Sys."}, {"role": "user", "content": "Question: q"},
             {"role": "assistant", "content": "<text_search>Kodiax Tower</text_search>"}]] * 3
    lines = tokenizer_corpus(rows, swaps=2)
    assert lines.count("Sys.") == 1
    searches = [x for x in lines if x.startswith("<text_search>")]
    assert len(searches) == 6 and not any("Kodiax" in x for x in searches) and len(set(searches)) > 1

