"""The step bodies of :mod:`components.kfp.steps` as ``@dsl.component``s, with images from settings.

Why a function and not decorators: the image is a setting (``DMMS_PIPELINES__BASE_IMAGE`` for CPU
steps, ``DMMS_PIPELINES__TRAIN_IMAGE`` for GPU steps; both the train image by default: it carries
every step body's dependencies, tests/manifests/test_step_images.py proves it), read when a pipeline
is built, not at import. ``packages_to_install=[]`` and ``install_kfp_package=False``: the image
already has this package, every dependency and KFP's own runtime, so a pod never pip-installs at
start (most GPU clusters have no internet).

    ops = make_ops(load_settings().pipelines); task = ops.world(n_entities=10, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl

from components.common.settings import PipelinesSettings
from components.kfp import steps

GPU_STEPS = ("sft", "grpo", "evaluate")


@dataclass(frozen=True)
class Ops:
    world: dsl.base_component.BaseComponent
    index: dsl.base_component.BaseComponent
    champion: dsl.base_component.BaseComponent
    datagen: dsl.base_component.BaseComponent
    sft: dsl.base_component.BaseComponent
    grpo: dsl.base_component.BaseComponent
    evaluate: dsl.base_component.BaseComponent
    promote: dsl.base_component.BaseComponent
    cleanup: dsl.base_component.BaseComponent


def make_ops(p: PipelinesSettings) -> Ops:
    """Every step as a lightweight component on its image (GPU steps on the train image)."""
    def op(name: str):
        image = p.train_image if name in GPU_STEPS else p.base_image
        return dsl.component(getattr(steps, f"{name}_op"), base_image=image, packages_to_install=[],
                             install_kfp_package=False)

    return Ops(**{name: op(name) for name in Ops.__dataclass_fields__})
