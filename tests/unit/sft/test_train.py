"""SFT on the real tiny Qwen2.5-VL, on CPU, through our core (``run_sft``) and TRL's SFTTrainer.

Proves: only the model's turns carry loss (decoded labels == exactly the assistant turns; every
``<information>`` turn masked); a LoRA run trains only the language model's adapters (every one
changed, vision tower and base weights untouched), loss falls, metrics reach MLflow every step,
the merged final checkpoint reloads with ``load_model_and_processor`` and generates; after SFT the
model's turns parse as valid protocol actions far more often than before (greedy, held-out
prompts); the settings map onto SFTConfig/LoRA as the paper says.

Run: ``.venv/bin/python -m pytest -q tests/unit/sft``
"""

from __future__ import annotations

import io
import logging

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from transformers import TrainerCallback

from bench.expert_data import expert_trajectories
from components.agent.models import ensure_model, language_linear_modules, load_model_and_processor
from components.agent.protocol import STOP_STRINGS, parse_turn
from components.agent.sft_data import publish_dataset, rows_from_trajectories
from components.common.settings import load_settings
from components.common.storage import MANIFEST, join_uri, open_store, verify_version
from components.sft.config import lora_config, sft_config
from components.sft.train import build_trainer, run_sft

log = logging.getLogger(__name__)
N_TRAIN, N_HELD_OUT = 24, 8


def tiny_settings(root, **sft):
    return load_settings(
        profile="tiny", storage={"root": str(root / "store")},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}"},
        model={"name_or_path": str(root / "models" / "tiny")},
        # the LoRA path on unswapped rows with the old CPU values: what these tests are about
        sft={"save_steps": 1000, "full_finetune": False, "train_vision": False, "counterfactual_share": 0.0,
             "learning_rate": 5e-3, "warmup_ratio": 0.1, "max_length": 1024, "length_margin": 0, **sft})


def publish_train_set(settings, n=N_TRAIN):
    trajs, images = expert_trajectories(n)
    return publish_dataset(open_store(settings), "vqa", rows_from_trajectories(trajs, images))


class Snapshot(TrainerCallback):
    """Copies every parameter at train begin and end, with its trainable flag."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def valid_rate(model_path: str, settings) -> tuple[float, list[str]]:
    """Fraction of held-out first turns (greedy, cut at a stop string as generators do) that parse."""
    from trl.data_utils import prepare_multimodal_messages

    model, processor = load_model_and_processor(model_path, settings.model)
    trajs, images = expert_trajectories(N_HELD_OUT, offset=1000)
    texts = []
    for traj in trajs:
        image = Image.open(io.BytesIO(images[traj.input_image.sha256]))
        messages = prepare_multimodal_messages(traj.to_sft_messages()[:2], images=[image])
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        text = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        cuts = [text.index(s) + len(s) for s in STOP_STRINGS if s in text]
        texts.append(text[: min(cuts)] if cuts else text)
    return sum(parse_turn(t).valid for t in texts) / len(texts), texts


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-lora")
    settings = tiny_settings(root, max_steps=40)
    base = ensure_model(settings)
    data = publish_train_set(settings)
    snap = Snapshot()
    result = run_sft(settings, "vqa", base, open_store(settings).uri("checkpoints", "lora"), callbacks=[snap])
    return settings, base, data, result, snap


def test_loss_is_only_on_assistant_turns(tmp_path):
    """Decode the labels of a collated batch: exactly the assistant turns (+ their end-of-turn)."""
    settings = tiny_settings(tmp_path)
    trajs, images = expert_trajectories(4)
    rows = rows_from_trajectories(trajs, images)
    import datasets

    from components.agent.sft_data import features
    ds = datasets.Dataset.from_list(rows, features=features())
    trainer = build_trainer(settings, ds, ensure_model(settings), tmp_path / "out")
    examples = [{"messages": r["messages"], "images": [Image.open(io.BytesIO(r["images"][0]["bytes"]))]}
                for r in rows]
    batch = trainer.data_collator(examples)
    tok = trainer.processing_class.tokenizer
    for i, row in enumerate(rows):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        keep = (labels != -100).tolist()
        spans, start = [], None
        for j, k in enumerate([*keep, False]):
            if k and start is None:
                start = j
            elif not k and start is not None:
                spans.append(tok.decode(ids[start:j]))
                start = None
        assistant = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert spans == [a + "<|im_end|>\n" for a in assistant]
        assert torch.equal(labels[labels != -100], ids[labels != -100])
        full = tok.decode(ids[batch["attention_mask"][i] == 1])
        if row["text_searches"]:
            assert "<information>" in full and not any("<information>" in s for s in spans)
        assert "<|image_pad|>" in full and not any("<|image_pad|>" in s for s in spans)


def test_lora_trains_only_language_adapters(lora_run):
    _, _, _, result, snap = lora_run
    trainable = [n for n, (_, grad) in snap.before.items() if grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert sum(snap.before[n][0].numel() for n in trainable) == result.trainable_params
    unchanged = [n for n in trainable if torch.equal(snap.before[n][0], snap.after[n])]
    assert unchanged == []
    frozen_changed = [n for n, (p, grad) in snap.before.items() if not grad and not torch.equal(p, snap.after[n])]
    assert frozen_changed == []  # vision tower, merger, embeddings, base weights, lm_head
    assert any("visual" in n for n in snap.before)


def test_loss_falls_and_metrics_reach_mlflow_every_step(lora_run):
    settings, _, data, result, _ = lora_run
    assert result.run_id and result.global_step == 40 and result.lora
    client = MlflowClient(settings.tracking.uri)
    loss = [m.value for m in sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) >= 40
    assert loss[-1] < loss[0] - 0.1
    for name in ("learning_rate", "grad_norm", "tokens_per_s", "num_tokens"):
        assert client.get_metric_history(result.run_id, name), name
    run = client.get_run(result.run_id)
    assert run.data.tags["dmms.checkpoint_uri"] == result.final_uri
    assert run.data.params["sft.lora_r"] == "8" and run.data.params["sft.data_uri"] == data.uri


def test_merged_checkpoint_reloads_and_generates(lora_run, tmp_path):
    settings, base, _, result, _ = lora_run
    store = open_store(settings)
    manifest = verify_version(store, result.final_uri)
    assert "adapter_config.json" not in manifest.files  # merged, a plain model vLLM can serve
    assert {"model.safetensors", "config.json", "chat_template.jinja", "tokenizer.json"} <= set(manifest.files)
    merged, processor = load_model_and_processor(result.final_uri, settings.model)
    original, _ = load_model_and_processor(base, settings.model)
    m, o = dict(merged.named_parameters()), dict(original.named_parameters())
    assert m.keys() == o.keys()
    lin = {n + ".weight" for n in language_linear_modules(original)}
    assert all(not torch.equal(m[n], o[n]) for n in lin)  # the adapters were merged in
    assert all(torch.equal(m[n], o[n]) for n in m if n not in lin)  # everything else as it was
    rate, texts = valid_rate(result.final_uri, settings)
    assert all(isinstance(t, str) and t for t in texts)
    log.warning("LoRA (%d steps) valid-turn rate on held-out prompts: %.2f (%s)", result.global_step, rate,
                texts[0])


def test_after_sft_turns_parse_far_more_often(tmp_path):
    """Full fine-tuning (the tiny random model's frozen random lm_head makes LoRA too slow to
    learn the tags in a test-sized run): measure the valid-turn rate before and after."""
    settings = tiny_settings(tmp_path, full_finetune=True, max_steps=80, learning_rate=5e-3)
    base = ensure_model(settings)
    before, _ = valid_rate(base, settings)
    publish_train_set(settings)
    result = run_sft(settings, "vqa", base, open_store(settings).uri("checkpoints", "full"))
    after, texts = valid_rate(result.final_uri, settings)
    log.warning("valid-turn rate on %d held-out prompts: before SFT %.2f, after %.2f (%s)",
                N_HELD_OUT, before, after, texts[:2])
    assert before <= 0.125 and after >= 0.5


def test_settings_map_onto_sft_and_lora_configs(tmp_path):
    settings = tiny_settings(tmp_path)
    config = sft_config(settings, tmp_path / "out")
    assert config.assistant_only_loss and config.report_to in ([], "none", ["none"])
    assert not config.bf16 and not config.gradient_checkpointing  # CPU
    assert config.save_strategy == "steps" and not config.save_only_model
    assert (config.learning_rate, config.lr_scheduler_type, config.warmup_steps) == (5e-3, "cosine", 0.1)
    paper = load_settings(profile="paper", tools={"token": "t"}, storage={"root": str(tmp_path)}).sft
    assert (paper.epochs, paper.learning_rate, paper.lr_scheduler, paper.warmup_ratio) == (3, 1e-4, "cosine", 0.1)
    assert (paper.lora_r, paper.bf16, paper.full_finetune) == (8, True, False)
    model, _ = load_model_and_processor(ensure_model(settings), settings.model)
    lora = lora_config(settings, model)
    expected = set(language_linear_modules(model))
    from peft import get_peft_model

    wrapped = get_peft_model(model, lora)
    targeted = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_parameters() if ".lora_A" in n}
    assert {t.removeprefix("base_model.model.") for t in targeted} == expected
    assert not any("visual" in t or "lm_head" in t for t in targeted)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16, 0.05)


def test_refuses_to_overwrite_a_final_checkpoint(lora_run):
    settings, base, _, result, _ = lora_run
    out = result.final_uri.rsplit("/", 1)[0]
    assert open_store(settings).exists(join_uri(out, "final", MANIFEST))
    with pytest.raises(Exception, match="already holds a final checkpoint"):
        run_sft(settings, "vqa", base, out)
