"""``full``: world (or seed data) → index → datagen → sft → grpo → evaluate → promote, on GPU node pools.

The paper's run (docs/design.md §1): 10k DeepMMSearchVQA samples, profile ``paper`` in every pod, SFT,
GRPO and evaluation on the GPU pool. ``seed_vqa_uri`` (a VQA set in the store, e.g. converted
InfoSeek) replaces the world's train split as datagen's seed; the world still feeds the index and
its test split the evaluation. Build: ``build(load_settings())``; compile: ``dmms compile``.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signatures as types

from typing import Any

from kfp import dsl

from components.common.settings import Settings
from components.kfp.ops import make_ops
from pipelines.catalog import PipelineDef
from pipelines.stages import Build, data_stage, train_stage

DEFAULTS: dict[str, Any] = {
    "n_entities": 200, "world_seed": 0, "index_uri": "", "seed_vqa_uri": "", "teacher": "llm",
    "datagen_n": 10_000, "base_model": "", "modes": "direct,rag,agent", "gate_mode": "agent", "eval_limit": 0,
    "extra_benchmarks": "",
}


def build_train_pipeline(settings: Settings, cluster: bool, name: str, profile: str, defaults: dict[str, Any],
                         gpu_pool: bool, description: str) -> PipelineDef:
    """The data stage then the train stage as one pipeline named ``name`` with ``defaults``."""
    b = Build(make_ops(settings.pipelines), settings, profile, cluster, gpu_pool)
    data, train = data_stage(b, name), train_stage(b, name)
    d = dict(defaults)

    @dsl.pipeline(name=name, description=description)
    def whole(n_entities: int = d["n_entities"], world_seed: int = d["world_seed"],
              index_uri: str = d["index_uri"], seed_vqa_uri: str = d["seed_vqa_uri"], teacher: str = d["teacher"],
              datagen_n: int = d["datagen_n"], base_model: str = d["base_model"], modes: str = d["modes"],
              gate_mode: str = d["gate_mode"], eval_limit: int = d["eval_limit"],
              extra_benchmarks: str = d["extra_benchmarks"]) -> None:
        ds = data(n_entities=n_entities, world_seed=world_seed, index_uri=index_uri)
        ds.set_display_name("data")
        tr = train(world_uri=ds.outputs["world_uri"], world_test_uri=ds.outputs["test_uri"],
                   seed_vqa_uri=seed_vqa_uri, teacher=teacher, datagen_n=datagen_n, base_model=base_model,
                   tools_url="", modes=modes, gate_mode=gate_mode, eval_limit=eval_limit,
                   extra_benchmarks=extra_benchmarks, rl_prompts_uri=ds.outputs["val_uri"])
        tr.set_display_name("train")

    return PipelineDef(name.removeprefix("dmms-"), data, train, whole, d)


def build(settings: Settings, cluster: bool = True) -> PipelineDef:
    defaults = dict(DEFAULTS)
    if cluster:  # the tool-server Deployment serves this prefix
        defaults["index_uri"] = settings.pipelines.cluster_env.get("DMMS_TOOLS__INDEX", "")
    return build_train_pipeline(settings, cluster, "dmms-full", "paper", defaults, gpu_pool=True,
                                description=__doc__.split("\n\n")[0])
