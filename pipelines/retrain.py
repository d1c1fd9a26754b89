"""``retrain``: refresh the data, continue GRPO from the ``champion`` alias, evaluate, promote.

For schedules (``make schedule PIPELINE=retrain CRON="0 3 * * 0"``): each run makes fresh
DeepMMSearchVQA (``datagen_n`` samples), trains the current champion further with GRPO, evaluates
it on the same benchmarks and lets the gates decide whether it replaces the champion.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signatures as types

from typing import Any

from kfp import dsl

from components.common.settings import Settings
from components.kfp.ops import make_ops
from pipelines.catalog import PipelineDef
from pipelines.full import DEFAULTS as FULL_DEFAULTS
from pipelines.stages import Build, data_stage, retrain_stage

DEFAULTS: dict[str, Any] = {k: v for k, v in FULL_DEFAULTS.items() if k != "base_model"} | {"datagen_n": 2_000}


def build(settings: Settings, cluster: bool = True) -> PipelineDef:
    b = Build(make_ops(settings.pipelines), settings, "paper", cluster, gpu_pool=True)
    data, main = data_stage(b, "dmms-retrain"), retrain_stage(b, "dmms-retrain")
    d = dict(DEFAULTS)
    if cluster:
        d["index_uri"] = settings.pipelines.cluster_env.get("DMMS_TOOLS__INDEX", "")

    @dsl.pipeline(name="dmms-retrain", description=__doc__.split("\n\n")[0])
    def whole(n_entities: int = d["n_entities"], world_seed: int = d["world_seed"],
              index_uri: str = d["index_uri"], seed_vqa_uri: str = d["seed_vqa_uri"], teacher: str = d["teacher"],
              datagen_n: int = d["datagen_n"], modes: str = d["modes"], gate_mode: str = d["gate_mode"],
              eval_limit: int = d["eval_limit"], extra_benchmarks: str = d["extra_benchmarks"]) -> None:
        ds = data(n_entities=n_entities, world_seed=world_seed, index_uri=index_uri)
        ds.set_display_name("data")
        rt = main(world_uri=ds.outputs["world_uri"], world_test_uri=ds.outputs["test_uri"],
                  seed_vqa_uri=seed_vqa_uri, teacher=teacher, datagen_n=datagen_n, tools_url="", modes=modes,
                  gate_mode=gate_mode, eval_limit=eval_limit, extra_benchmarks=extra_benchmarks,
                  rl_prompts_uri=ds.outputs["val_uri"])
        rt.set_display_name("retrain")

    return PipelineDef("retrain", data, main, whole, d)
