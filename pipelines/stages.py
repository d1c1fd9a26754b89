"""The two stages every pipeline is made of: DATA (world → index) and a MAIN stage.

Why two stages: the search tool-server must serve the index the data stage built before the main
stage's datagen, GRPO and evaluation call it. On the cluster it is a long-lived Deployment reached by
its Service name (``DMMS_TOOLS__URL``; it serves ``DMMS_TOOLS__INDEX``), and a pipeline runs both
stages as one DAG. The KFP local runner (``dmms run``) runs the data stage, starts a tool-server on a
free loopback port over its index, then runs the main stage with ``tools_url`` pointing there.

Main stages (each inside an ``ExitHandler`` whose cleanup task deletes the run's temporary objects):
- ``train``: datagen → sft → grpo → evaluate base, SFT and RL on the same benchmarks → promote RL
  (gated, and not significantly worse than SFT);
- ``retrain``: champion → datagen (fresh data) → grpo from the champion → evaluate → promote;
- ``eval``: evaluate one model.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signatures as types

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl

from components.common.settings import Settings
from components.kfp.ops import Ops
from pipelines.tasks import CPU, CPU_CACHED, CPU_RETRY, GPU, GRPO, SFT, Placement, configure

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER


@dataclass(frozen=True)
class Build:
    """What shapes a build: the ops, the settings, the pods' profile, cluster or local runner."""

    ops: Ops
    settings: Settings
    profile: str
    cluster: bool
    gpu_pool: bool  # GPU steps land on the GPU node pool (False: the tiny smoke run on CPU nodes)

    def place(self, task: dsl.PipelineTask, placement: Placement) -> dsl.PipelineTask:
        return configure(task, self.settings, placement, profile=self.profile, cluster=self.cluster,
                         gpu_pool=self.gpu_pool)


class DataOutputs(NamedTuple):
    world_uri: str
    train_uri: str
    val_uri: str  # GRPO's prompts: entity-disjoint from SFT's (train) rows and from test
    test_uri: str
    index_uri: str


def data_stage(b: Build, name: str):
    @dsl.pipeline(name=f"{name}-data", description="Offline world → tool-server index (both cached).")
    def data(n_entities: int, world_seed: int, index_uri: str = "") -> DataOutputs:
        world = b.place(b.ops.world(n_entities=n_entities, seed=world_seed), CPU_CACHED)
        world.set_display_name("world")
        index = b.place(b.ops.index(corpus_uri=world.outputs["corpus_uri"], out_uri=index_uri), CPU_CACHED)
        index.set_display_name("index")
        return DataOutputs(world.outputs["world_uri"], world.outputs["train_uri"], world.outputs["val_uri"],
                           world.outputs["test_uri"], index.output)

    return data


def _evaluate(b: Build, model_uri, label: str, world_test_uri, extra_benchmarks, modes, tools_url, eval_limit,
              sft=None, grpo=None):
    runs = {"sft_run_id": sft.outputs["mlflow_run_id"] if sft else "",
            "grpo_run_id": grpo.outputs["mlflow_run_id"] if grpo else ""}
    ev = b.place(b.ops.evaluate(model_uri=model_uri, world_test_uri=world_test_uri,
                                extra_benchmarks=extra_benchmarks, modes=modes, tools_url=tools_url,
                                limit=eval_limit, run_id=RUN_ID, label=label, **runs), GPU)
    ev.set_display_name(f"evaluate-{label}")
    return ev


def _evaluate_promote(b: Build, checkpoint, world_test_uri, extra_benchmarks, modes, tools_url, eval_limit,
                      gate_mode, reference=None, sft=None) -> None:
    """Evaluate the RL checkpoint and gate it; ``reference`` (the SFT evaluation) is what it must not
    be significantly worse than; ``sft`` (the SFT task) adds its loss curve to the report."""
    ev = _evaluate(b, checkpoint.outputs["checkpoint_uri"], "rl", world_test_uri, extra_benchmarks, modes,
                   tools_url, eval_limit, sft=sft, grpo=checkpoint)
    promo = b.place(b.ops.promote(eval_run_id=ev.outputs["eval_run_id"],
                                  checkpoint_uri=checkpoint.outputs["checkpoint_uri"],
                                  manifest_sha256=checkpoint.outputs["manifest_sha256"], gate_mode=gate_mode,
                                  run_id=RUN_ID,
                                  reference_eval_run_id=reference.outputs["eval_run_id"] if reference else ""), CPU)
    promo.set_display_name("promote")


def train_stage(b: Build, name: str):
    @dsl.pipeline(name=f"{name}-train", description="datagen → sft → grpo → evaluate → promote.")
    def train(world_uri: str, world_test_uri: str, seed_vqa_uri: str, teacher: str, datagen_n: int,
              base_model: str, tools_url: str, modes: str, gate_mode: str, eval_limit: int,
              extra_benchmarks: str, rl_prompts_uri: str = "") -> None:
        cleanup = b.place(b.ops.cleanup(run_id=RUN_ID), CPU)
        cleanup.set_display_name("cleanup")
        with dsl.ExitHandler(cleanup, name="cleanup-on-exit"):
            data = b.place(b.ops.datagen(world_uri=world_uri, seed_vqa_uri=seed_vqa_uri, teacher=teacher,
                                         n=datagen_n, tools_url=tools_url, run_id=RUN_ID), CPU_RETRY)
            data.set_display_name("datagen")
            sft = b.place(b.ops.sft(data_uri=data.outputs["Output"], base_model=base_model, run_id=RUN_ID), SFT)
            sft.set_display_name("sft")
            grpo = b.place(b.ops.grpo(data_uri=data.outputs["Output"], model_uri=sft.outputs["checkpoint_uri"],
                                      tools_url=tools_url, run_id=RUN_ID, prompts_uri=rl_prompts_uri,
                                      seed_vqa_uri=seed_vqa_uri), GRPO)
            grpo.set_display_name("grpo")
            # before and after, on the same benchmark version: the base model, SFT, then RL (gated)
            _evaluate(b, sft.outputs["base_uri"], "base", world_test_uri, extra_benchmarks, modes, tools_url,
                      eval_limit)
            ev_sft = _evaluate(b, sft.outputs["checkpoint_uri"], "sft", world_test_uri, extra_benchmarks, modes,
                               tools_url, eval_limit, sft=sft)
            _evaluate_promote(b, grpo, world_test_uri, extra_benchmarks, modes, tools_url, eval_limit, gate_mode,
                              reference=ev_sft, sft=sft)

    return train


def retrain_stage(b: Build, name: str):
    @dsl.pipeline(name=f"{name}-main", description="champion → datagen → grpo → evaluate → promote.")
    def retrain(world_uri: str, world_test_uri: str, seed_vqa_uri: str, teacher: str, datagen_n: int,
                tools_url: str, modes: str, gate_mode: str, eval_limit: int, extra_benchmarks: str,
                rl_prompts_uri: str = "") -> None:
        cleanup = b.place(b.ops.cleanup(run_id=RUN_ID), CPU)
        cleanup.set_display_name("cleanup")
        with dsl.ExitHandler(cleanup, name="cleanup-on-exit"):
            champ = b.place(b.ops.champion(run_id=RUN_ID), CPU)
            champ.set_display_name("champion")
            data = b.place(b.ops.datagen(world_uri=world_uri, seed_vqa_uri=seed_vqa_uri, teacher=teacher,
                                         n=datagen_n, tools_url=tools_url, run_id=RUN_ID), CPU_RETRY)
            data.set_display_name("datagen")
            grpo = b.place(b.ops.grpo(data_uri=data.outputs["Output"], model_uri=champ.output, tools_url=tools_url,
                                      run_id=RUN_ID, prompts_uri=rl_prompts_uri, seed_vqa_uri=seed_vqa_uri), GRPO)
            grpo.set_display_name("grpo")
            _evaluate_promote(b, grpo, world_test_uri, extra_benchmarks, modes, tools_url, eval_limit, gate_mode)

    return retrain


def eval_stage(b: Build, name: str):
    @dsl.pipeline(name=f"{name}-main", description="Evaluate one model (store URI, folder or hub id).")
    def evaluate(model_uri: str, world_test_uri: str, extra_benchmarks: str, modes: str, tools_url: str,
                 eval_limit: int) -> None:
        cleanup = b.place(b.ops.cleanup(run_id=RUN_ID), CPU)
        cleanup.set_display_name("cleanup")
        with dsl.ExitHandler(cleanup, name="cleanup-on-exit"):
            ev = b.place(b.ops.evaluate(model_uri=model_uri, world_test_uri=world_test_uri,
                                        extra_benchmarks=extra_benchmarks, modes=modes, tools_url=tools_url,
                                        limit=eval_limit, run_id=RUN_ID), GPU)
            ev.set_display_name("evaluate")

    return evaluate
