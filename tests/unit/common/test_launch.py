"""The multi-GPU launch of the training steps at the ``paper`` profile (components/common/launch.py).

Asserts what a GPU node would run: 8 ranks per step under ``accelerate launch`` with the FSDP
full-shard config (decoder layers and vision blocks wrapped, bf16 compute over fp32 masters, never
downcast), the global batches the profile states (GRPO 512 completions, SFT 16 rows), and the
command line each rank gets. No GPU runs here: the ranks' runner is a stand-in that records the
command and the config file it was given; tests/integration/test_launch_ranks.py runs two real
ranks on the CPU. A GPU node adds NCCL, FSDP sharding of the 7B weights and their memory.
"""

from __future__ import annotations

import sys

import pytest
import yaml

from components.common.launch import (
    FSDP_WRAP,
    LaunchError,
    accelerate_argv,
    accelerate_config,
    global_batch,
    launch_node,
    launch_plan,
    read_result,
)
from components.common.settings import load_settings

PAPER_SECRETS = {"DMMS_TOOLS__TOKEN": "t", "DMMS_STORAGE__ACCESS_KEY": "a", "DMMS_STORAGE__SECRET_KEY": "s"}


@pytest.fixture()
def paper(monkeypatch):
    for key, value in PAPER_SECRETS.items():
        monkeypatch.setenv(key, value)
    return load_settings(profile="paper")


class Recorder:
    """Stands in for the ranks: records the argv, the env and the accelerate config file it was handed."""

    def __init__(self, code: int = 0):
        self.code, self.calls = code, []

    def __call__(self, argv, env):
        config = yaml.safe_load(open(argv[argv.index("--config_file") + 1]).read())
        self.calls.append((argv, env, config))
        return self.code


@pytest.mark.parametrize("step", ["sft", "grpo"])
def test_paper_trains_on_eight_ranks_with_fsdp_full_shard(paper, step):
    plan = launch_plan(paper, step)
    assert (plan.nodes, plan.procs_per_node, plan.world_size, plan.distributed) == (1, 8, 8, True)
    runner = Recorder()
    launch_node(paper, step, ["--data", "d", "--model", "m", "--out", "o"], runner=runner, node_rank=0)
    ((argv, _env, config),) = runner.calls
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "8"
    assert argv[argv.index("--num_machines") + 1] == "1"
    module = argv.index("-m", 3)
    assert argv[module:] == ["-m", f"components.{step}.train", "--data", "d", "--model", "m", "--out", "o"]
    assert config["distributed_type"] == "FSDP"
    assert config["num_processes"] == 8 and config["num_machines"] == 1
    assert config["mixed_precision"] == "bf16" and config["downcast_bf16"] == "no"
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == list(FSDP_WRAP)
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # rank 0 gathers the final model


def test_wrapped_classes_exist_in_qwen2_5_vl():
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    for name in FSDP_WRAP:
        assert hasattr(modeling_qwen2_5_vl, name), name


def test_paper_global_batches_are_the_stated_arithmetic(paper):
    grpo = launch_plan(paper, "grpo")
    assert global_batch(paper, "grpo", grpo) == 8 * 8 * 8 == 512  # batch x grad_accum x GPUs
    assert global_batch(paper, "grpo", grpo) % paper.grpo.num_generations == 0  # 64 prompts x 8 rollouts
    assert global_batch(paper, "sft", launch_plan(paper, "sft")) == 1 * 2 * 8


def test_multi_node_command_takes_the_rank_and_rendezvous_from_the_torch_runtime(paper, monkeypatch):
    paper.pipelines.nodes = 2
    monkeypatch.setenv("PET_NODE_RANK", "1")
    monkeypatch.setenv("PET_MASTER_ADDR", "dmms-sft-1-node-0-0.dmms-sft-1")
    monkeypatch.setenv("PET_MASTER_PORT", "29400")
    runner = Recorder()
    launch_node(paper, "sft", ["--out", "o"], runner=runner)
    ((argv, _env, config),) = runner.calls
    assert argv[argv.index("--num_processes") + 1] == "16"
    assert argv[argv.index("--num_machines") + 1] == "2"
    assert argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[argv.index("--main_process_ip") + 1] == "dmms-sft-1-node-0-0.dmms-sft-1"
    assert argv[argv.index("--main_process_port") + 1] == "29400"
    assert config["num_machines"] == 2 and config["num_processes"] == 16


def test_tiny_profile_trains_in_process_and_cpu_ranks_use_gloo_ddp():
    tiny = load_settings(profile="tiny")
    assert not launch_plan(tiny, "sft").distributed and not launch_plan(tiny, "grpo").distributed
    tiny.pipelines.gpu_count = 2
    plan = launch_plan(tiny, "sft")
    config = accelerate_config(plan)
    assert plan.cpu and not plan.fsdp and "fsdp_config" not in config
    assert config["use_cpu"] is True and config["mixed_precision"] == "no"
    argv = accelerate_argv(plan, "c.yaml", "sft", [])
    assert "--machine_rank" not in argv


def test_failed_ranks_raise_with_the_exit_code(paper):
    with pytest.raises(LaunchError, match="exited with code 3"):
        launch_node(paper, "grpo", [], runner=Recorder(code=3), node_rank=0)


def test_missing_result_says_where_it_looked(tmp_path):
    settings = load_settings(profile="tiny", storage={"root": str(tmp_path)})
    with pytest.raises(LaunchError, match="result.json"):
        read_result(settings, str(tmp_path / "checkpoints" / "x"))
