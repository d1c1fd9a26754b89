"""``eval``: evaluate a given model (store URI, checkpoint folder or hub id) on the world's test split
and any extra benchmarks (``NAME=URI,...`` in the VQA format), on the GPU pool.

    dmms submit --pipeline eval --param model_uri=s3://deepmmsearch/checkpoints/<run>-grpo/final
"""

# no `from __future__ import annotations`: KFP reads the pipeline signatures as types

from typing import Any

from kfp import dsl

from components.common.settings import Settings
from components.kfp.ops import make_ops
from pipelines.catalog import PipelineDef
from pipelines.stages import Build, data_stage, eval_stage

DEFAULTS: dict[str, Any] = {"n_entities": 200, "world_seed": 0, "index_uri": "", "model_uri": "",
                            "extra_benchmarks": "", "modes": "direct,rag,agent", "eval_limit": 0}


def build(settings: Settings, cluster: bool = True) -> PipelineDef:
    b = Build(make_ops(settings.pipelines), settings, "paper", cluster, gpu_pool=True)
    data, main = data_stage(b, "dmms-eval"), eval_stage(b, "dmms-eval")
    d = dict(DEFAULTS)
    if cluster:
        d["index_uri"] = settings.pipelines.cluster_env.get("DMMS_TOOLS__INDEX", "")

    @dsl.pipeline(name="dmms-eval", description=__doc__.split("\n\n")[0])
    def whole(model_uri: str = d["model_uri"], n_entities: int = d["n_entities"], world_seed: int = d["world_seed"],
              index_uri: str = d["index_uri"], extra_benchmarks: str = d["extra_benchmarks"],
              modes: str = d["modes"], eval_limit: int = d["eval_limit"]) -> None:
        ds = data(n_entities=n_entities, world_seed=world_seed, index_uri=index_uri)
        ds.set_display_name("data")
        ev = main(model_uri=model_uri, world_test_uri=ds.outputs["test_uri"], extra_benchmarks=extra_benchmarks,
                  modes=modes, tools_url="", eval_limit=eval_limit)
        ev.set_display_name("evaluate")

    return PipelineDef("eval", data, main, whole, d)
