"""``full`` trains on real data or refuses, before anything runs (pipelines/catalog.py ``check_params``)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.catalog import ParamsError, check_params


def test_full_without_seed_or_benchmarks_names_both_parameters():
    with pytest.raises(ParamsError) as exc:
        check_params("full", {})
    assert "--param seed_vqa_uri=URI is required" in str(exc.value)
    assert "--param extra_benchmarks=URI is required" in str(exc.value)
    assert "--allow-synthetic" in str(exc.value)


def test_full_with_the_oracle_teacher_is_refused_even_with_real_data():
    real = {"seed_vqa_uri": "s3://b/vqa/infoseek", "extra_benchmarks": "infoseek=s3://b/bench/infoseek"}
    check_params("full", real)  # the default teacher is the llm teacher
    with pytest.raises(ParamsError, match="teacher=oracle reads the answers"):
        check_params("full", {**real, "teacher": "oracle"})


def test_allow_synthetic_and_the_smoke_pipeline_pass():
    check_params("full", {"teacher": "oracle"}, allow_synthetic=True)
    check_params("smoke", {})


def test_dmms_run_full_stops_at_once_with_the_message():
    from components.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["run", "--pipeline", "full"])
    assert res.exit_code == 2
    assert "seed_vqa_uri" in res.output and "Traceback" not in res.output
