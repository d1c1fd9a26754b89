"""Thin Kubeflow Pipelines components over the step cores (world, index, datagen, sft, grpo, evaluate, promote).

Why here: a component body runs inside the step's image, imports the core from this package and
calls it; nothing else. ``steps`` holds the bodies (plain functions, self-contained for KFP's
lightweight-component serialisation), ``ops`` turns them into ``@dsl.component``s with the images
from settings, ``io`` holds the input/output plumbing the bodies share (URIs to local folders, the
KFP run id as the ``KFP_RUN_ID`` env the tracking tags read). The pipelines live in ``pipelines/``.
"""
