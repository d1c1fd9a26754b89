"""Bodies of the KFP components: parse inputs, call the step's core, write outputs. No step logic.

Why plain functions: KFP serialises a lightweight component's SOURCE into the pipeline YAML, so each
body is self-contained (imports inside) and runs in an image that has this package installed;
:mod:`components.kfp.ops` wraps them with ``dsl.component`` and the image from settings. Settings
reach a body as ``DMMS_*`` env (set per task by the pipeline, Secrets as env) plus the explicit
parameters below; ``run_id`` is ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` (tags every MLflow run).
Deterministic steps (world, index) take no run id, so KFP's cache key is their real inputs.

Run them through a pipeline: ``dmms run --pipeline smoke`` (KFP local runner) or ``dmms submit``.
NB: no ``from __future__ import annotations`` here: KFP reads the annotations as types.
"""

from typing import NamedTuple

from kfp.dsl import HTML, Markdown, Metrics, Output


def world_op(n_entities: int, seed: int) -> NamedTuple(
        "WorldOutputs", [("world_uri", str), ("corpus_uri", str), ("train_uri", str), ("val_uri", str),
                         ("test_uri", str)]):
    """Make the offline world for (n_entities, seed) in the object store; return its URIs."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components.common.logging import setup_logging
    from components.common.settings import load_settings
    from components.common.storage import is_s3, join_uri, open_store
    from components.world.make import make_world

    setup_logging()
    settings = load_settings()
    store = open_store(settings)
    uri = store.uri("worlds", f"n{n_entities}-seed{seed}")
    if is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="dmms-world-") as tmp:
            make_world(Path(tmp, "world"), n_entities, seed)
            store.upload_dir(Path(tmp, "world"), uri)
    else:
        make_world(Path(uri), n_entities, seed)
    out = namedtuple("WorldOutputs", ["world_uri", "corpus_uri", "train_uri", "val_uri", "test_uri"])
    return out(uri, join_uri(uri, "corpus"), *(join_uri(uri, "vqa", s) for s in ("train", "val", "test")))


def index_op(corpus_uri: str, out_uri: str) -> str:
    """Build the tool-server index of ``corpus_uri`` into ``out_uri`` (default: next to the corpus)."""
    from components.common.logging import setup_logging
    from components.common.settings import load_settings
    from components.common.storage import open_store
    from components.search.index import build_index

    setup_logging()
    settings = load_settings()
    if not out_uri:
        world = corpus_uri.rstrip("/").rsplit("/", 2)[-2]
        out_uri = open_store(settings).uri("indexes", world)
    build_index(corpus_uri, out_uri, settings)
    return out_uri


def champion_op(run_id: str) -> str:
    """The checkpoint URI behind the registry's ``champion`` alias (retrain continues from it)."""
    from components.common.logging import setup_logging
    from components.common.tracking import resolve_alias
    from components.kfp.io import bind_run

    setup_logging()
    return resolve_alias(bind_run(run_id), "champion").checkpoint_uri


def sft_op(data_uri: str, base_model: str, run_id: str, metrics: Output[Metrics]) -> NamedTuple(
        "SFTOutputs", [("checkpoint_uri", str), ("manifest_sha256", str), ("mlflow_run_id", str),
                       ("base_uri", str)]):
    """SFT from ``base_model`` (store URI, folder or hub id; empty: the profile's model) on ``data_uri``;
    ``base_uri`` is the model SFT started from (the base row of the before/after evaluation)."""
    import tempfile
    from collections import namedtuple

    from components.common.launch import launch_plan
    from components.common.logging import setup_logging
    from components.common.storage import open_store
    from components.kfp.io import bind_run, local_model
    from components.sft.train import train_step

    setup_logging()
    settings = bind_run(run_id)
    # The run id makes the output URI stable across retries of this task: a retried step resumes.
    out_uri = open_store(settings).uri("checkpoints", f"{run_id}-sft")
    plan = launch_plan(settings, "sft")
    with tempfile.TemporaryDirectory(prefix="dmms-sft-model-") as tmp:
        # empty: the profile's model (the tiny profile may build it from this dataset inside run_sft);
        # the nodes of a TrainJob fetch a store URI themselves
        model = local_model(settings, base_model, tmp) if base_model and plan.nodes == 1 else base_model
        result = train_step(settings, data_uri, model, out_uri)  # one rank per GPU (and node) if > 1
    metrics.log_metric("global_step", result.global_step)
    if result.train_loss is not None:
        metrics.log_metric("train_loss", result.train_loss)
    out = namedtuple("SFTOutputs", ["checkpoint_uri", "manifest_sha256", "mlflow_run_id", "base_uri"])
    return out(result.final_uri, result.manifest_sha256, result.run_id or "", result.base_model_uri or base_model)


def datagen_op(world_uri: str, seed_vqa_uri: str, teacher: str, n: int, tools_url: str,
               run_id: str, metrics: Output[Metrics]) -> str:
    """DeepMMSearchVQA from ``seed_vqa_uri`` (empty: the world's train split) with ``teacher``; return
    the dataset version URI."""
    import tempfile
    from pathlib import Path

    from components.common.logging import setup_logging
    from components.datagen.run import run_datagen
    from components.kfp.io import bind_run, local_dir

    setup_logging()
    settings = bind_run(run_id)
    if tools_url:
        settings.tools.url = tools_url
    with tempfile.TemporaryDirectory(prefix="dmms-datagen-") as tmp:
        if seed_vqa_uri:
            seed = local_dir(settings, seed_vqa_uri, tmp)
        else:  # the whole world, so the oracle teacher finds world.json above vqa/train
            seed = local_dir(settings, world_uri, tmp) / "vqa" / "train"
        result = run_datagen(settings, seed, teacher, n, Path(tmp, "record"))
    metrics.log_metric("rows", result.rows)
    for key, value in result.counts.items():
        metrics.log_metric(f"count.{key}", value)
    return result.dataset_uri


def grpo_op(data_uri: str, model_uri: str, tools_url: str, run_id: str, metrics: Output[Metrics],
            prompts_uri: str = "", seed_vqa_uri: str = "") -> NamedTuple(
        "GRPOOutputs", [("checkpoint_uri", str), ("manifest_sha256", str), ("mlflow_run_id", str)]):
    """GRPO from ``model_uri`` (the SFT checkpoint, or the champion) on the questions of
    ``prompts_uri`` (a VQA set: the world's val split, entity-disjoint from SFT's rows and from the
    test split). With seed data (``seed_vqa_uri``) or no ``prompts_uri``: the questions of the
    dataset ``data_uri`` (the world's split would be another distribution)."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components.common.launch import launch_plan
    from components.common.logging import setup_logging
    from components.common.storage import open_store
    from components.grpo.train import train_step
    from components.kfp.io import bind_run, local_dir, local_model

    setup_logging()
    settings = bind_run(run_id)
    if tools_url:
        settings.tools.url = tools_url
    out_uri = open_store(settings).uri("checkpoints", f"{run_id}-grpo")
    plan = launch_plan(settings, "grpo")
    with tempfile.TemporaryDirectory(prefix="dmms-grpo-model-") as tmp:
        # the nodes of a TrainJob fetch store URIs themselves; one node shares this pod's copies
        model = local_model(settings, model_uri, tmp) if plan.nodes == 1 else model_uri
        prompts = data_uri if seed_vqa_uri or not prompts_uri else (
            str(local_dir(settings, prompts_uri, Path(tmp, "prompts"))) if plan.nodes == 1 else prompts_uri)
        # on the cluster (grpo.launch_rollout_servers): ONE vLLM rollout server for the step, started
        # here; with gpu_count/nodes > 1 every rank uses it
        result = train_step(settings, prompts, model, out_uri, run_id=run_id,
                            env={"DMMS_TOOLS__URL": tools_url} if tools_url else None)
    metrics.log_metric("global_step", result.global_step)
    out = namedtuple("GRPOOutputs", ["checkpoint_uri", "manifest_sha256", "mlflow_run_id"])
    return out(result.final_uri, result.manifest_sha256, result.run_id or "")


def evaluate_op(model_uri: str, world_test_uri: str, extra_benchmarks: str, modes: str, tools_url: str,
                limit: int, run_id: str, metrics: Output[Metrics], report: Output[HTML],
                table: Output[Markdown], label: str = "", sft_run_id: str = "",
                grpo_run_id: str = "") -> NamedTuple("EvalOutputs", [("eval_run_id", str), ("table_md", str)]):
    """Evaluate ``model_uri`` (empty: the profile's base model) on the world's test split and
    ``extra_benchmarks`` (NAME=URI,...); ``label`` (base, sft, rl) is tagged ``dmms.checkpoint``;
    the MLflow runs that trained it (``sft_run_id``, ``grpo_run_id``) give the report its curves."""
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components.agent.models import ensure_model
    from components.common.logging import setup_logging
    from components.common.tracking import client
    from components.evaluate.generate import ModelSpec
    from components.evaluate.run import evaluate
    from components.kfp.io import bind_run, local_benchmarks, local_model

    setup_logging()
    settings = bind_run(run_id)
    if limit > 0:
        settings.evaluate.limit = limit
    specs = ([f"world={world_test_uri}"] if world_test_uri else []) + \
        [s.strip() for s in extra_benchmarks.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="dmms-eval-") as tmp:
        model = local_model(settings, model_uri, Path(tmp, "model")) if model_uri else ensure_model(settings)
        benches = local_benchmarks(settings, specs, Path(tmp, "bench"))
        result = evaluate(settings, ModelSpec(name=model), benches,
                          [m.strip() for m in modes.split(",") if m.strip()], tools_url or None, Path(tmp, "out"),
                          training_runs={"sft": sft_run_id, "grpo": grpo_run_id})
        shutil.copyfile(result.files["report"], report.path)
        table_md = Path(result.files["table_md"]).read_text(encoding="utf-8")
    Path(table.path).write_text(table_md, encoding="utf-8")
    for key, value in result.metrics.items():
        metrics.log_metric(key, value)
    if result.run_id:  # the model was evaluated from a temporary copy: record where it really lives
        client(settings).set_tag(result.run_id, "dmms.model_uri", model_uri or str(model))
        client(settings).set_tag(result.run_id, "dmms.checkpoint", label or "model")
    return namedtuple("EvalOutputs", ["eval_run_id", "table_md"])(result.run_id or "", table_md)


def promote_op(eval_run_id: str, checkpoint_uri: str, manifest_sha256: str, gate_mode: str,
               run_id: str, reference_eval_run_id: str = "") -> NamedTuple(
                   "PromoteOutputs", [("promoted", bool), ("version", str), ("reasons", str)]):
    """Register the evaluated checkpoint as challenger; crown it champion if it passes the gates
    (and, given ``reference_eval_run_id``, is not significantly worse than the checkpoint it was
    trained from)."""
    import json
    from collections import namedtuple

    from components.common.logging import setup_logging
    from components.kfp.io import bind_run
    from components.registry.promote import promote

    setup_logging()
    settings = bind_run(run_id)
    if gate_mode:
        settings.promote.mode = gate_mode
    decision = promote(settings, eval_run_id, checkpoint_uri, manifest_sha256 or None, reference_eval_run_id or None)
    out = namedtuple("PromoteOutputs", ["promoted", "version", "reasons"])
    return out(decision.promoted, decision.version or "", json.dumps(decision.reasons))


def cleanup_op(run_id: str) -> None:
    """Exit handler: delete this run's temporary objects (``tmp/<run_id>``) and any vLLM rollout server
    a killed GRPO step left (label ``deepmmsearch.io/run``; skipped outside a cluster); runs whether
    the pipeline succeeded or failed."""
    import logging

    from components.common.logging import setup_logging
    from components.common.storage import open_store
    from components.grpo.servers import cleanup_rollout_servers
    from components.kfp.io import bind_run, scratch_uri

    setup_logging()
    settings = bind_run(run_id)
    store, scratch = open_store(settings), scratch_uri(settings, run_id)
    if store.list(scratch, recursive=True):
        store.delete(scratch, recursive=True)
        logging.getLogger("dmms.cleanup").info("deleted %s", scratch)
    cleanup_rollout_servers(run_id)
