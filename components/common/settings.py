"""One validated settings tree for every step of deepmmsearch.

Why: datagen, SFT, GRPO, evaluation, the tool-server and the pipelines all need the same knobs
(where the object store is, where MLflow is, how to reach the tools, which model). They read them
from ONE pydantic-settings tree, so a value is declared, documented and validated once.

Where values come from, strongest first:
  1. keyword arguments to ``load_settings(...)`` (the CLI's flags),
  2. ``DMMS_*`` environment variables, nested with ``__`` (``DMMS_TOOLS__PORT=8081``),
  3. a ``.env`` file in the working directory,
  4. a YAML file named by ``DMMS_CONFIG`` (the user's own profile file),
  5. the packaged profile YAML (``profiles/tiny.yaml`` or ``profiles/paper.yaml``) chosen by
     ``profile`` (``DMMS_PROFILE``; default ``tiny``),
  6. the defaults declared here.

Errors are raised as :class:`SettingsError`, whose message names the environment variable to
change. Secrets are ``SecretStr``: they print as ``**********`` and ``public_dict()`` masks them,
so nothing secret reaches logs or MLflow params.

Run ``dmms config show`` to see the resolved settings (secrets masked).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from components.common.settings_cluster import PipelinesSettings, ServingSettings  # noqa: F401  (re-exported)
from components.common.settings_sections import (  # noqa: F401  (re-exported: import sections from here)
    ENV_PREFIX,
    PROFILES_DIR,
    AgentSettings,
    JudgeSettings,
    LLMEndpointSettings,
    ModelSettings,
    Profile,
    SettingsError,
    StorageSettings,
    ToolsSettings,
    TrackingSettings,
    _Section,
    env_name,
)
from components.common.settings_steps import (  # noqa: F401  (re-exported)
    DatagenSettings,
    EvaluateSettings,
    GRPOSettings,
    PromoteSettings,
    SFTSettings,
)


class Settings(BaseSettings):
    """The whole tree. Build it with :func:`load_settings` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_assignment=True,
    )

    profile: Profile = Field("tiny", description="tiny (CPU, offline) or paper (GPU, 7B).")
    run_name: str | None = Field(None, description="Name of the MLflow/KFP run.")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    tools: ToolsSettings = Field(default_factory=ToolsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    teacher: LLMEndpointSettings = Field(default_factory=LLMEndpointSettings)
    sft: SFTSettings = Field(default_factory=SFTSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    promote: PromoteSettings = Field(default_factory=PromoteSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    pipelines: PipelinesSettings = Field(default_factory=PipelinesSettings)
    datagen: DatagenSettings = Field(default_factory=DatagenSettings)
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems: list[str] = []
        if self.storage.root.startswith("s3://"):
            if not self.storage.endpoint:
                problems.append(f"{env_name('storage', 'endpoint')} is required when "
                                f"{env_name('storage', 'root')} is s3:// (e.g. minio:9000)")
            for key in ("access_key", "secret_key"):
                if getattr(self.storage, key) is None:
                    problems.append(f"{env_name('storage', key)} is required when "
                                    f"{env_name('storage', 'root')} is s3://")
        low = self.model.dtype in ("bfloat16", "float16", "auto")
        for step in ("sft", "grpo"):
            if low and getattr(self, step).full_finetune:
                problems.append(
                    f"{env_name('model', 'dtype')}={self.model.dtype} with {env_name(step, 'full_finetune')}=true "
                    f"would keep the trained weights in low precision, where small updates round away: set "
                    f"{env_name('model', 'dtype')}=float32 (fp32 master weights) and {env_name(step, 'bf16')}=true "
                    f"(bf16 compute), or train LoRA adapters ({env_name(step, 'full_finetune')}=false)")
        if self.profile != "tiny" and self.tools.token is None:
            problems.append(f"{env_name('tools', 'token')} is required when profile is "
                            f"'{self.profile}' (the tool-server demands a bearer token outside tiny)")
        if self.tools.text_backend in ("brave", "serper") and self.tools.web_api_key is None:
            problems.append(f"{env_name('tools', 'web_api_key')} is required for "
                            f"{env_name('tools', 'text_backend')}={self.tools.text_backend}")
        if self.tools.text_backend == "searxng" and not self.tools.searxng_url:
            problems.append(f"{env_name('tools', 'searxng_url')} is required for "
                            f"{env_name('tools', 'text_backend')}=searxng")
        if self.tools.image_backend == "serpapi_lens" and self.tools.image_api_key is None:
            problems.append(f"{env_name('tools', 'image_api_key')} is required for "
                            f"{env_name('tools', 'image_backend')}=serpapi_lens")
        if self.tools.image_backend == "serpapi_lens" and not self.tools.image_publish_url:
            problems.append(f"{env_name('tools', 'image_publish_url')} is required for "
                            f"{env_name('tools', 'image_backend')}=serpapi_lens (SerpApi fetches the "
                            "query image from a public URL)")
        if self.tools.image_embedder == "clip" and not self.tools.image_embedder_path:
            problems.append(f"{env_name('tools', 'image_embedder_path')} is required for "
                            f"{env_name('tools', 'image_embedder')}=clip")
        if self.grpo.use_vllm and not (self.grpo.vllm_server_base_url or self.grpo.launch_rollout_servers):
            problems.append(f"{env_name('grpo', 'vllm_server_base_url')} or "
                            f"{env_name('grpo', 'launch_rollout_servers')}=true is required when "
                            f"{env_name('grpo', 'use_vllm')}=true (the rollout server's URL, e.g. "
                            "http://grpo-rollout:8000, or let the GRPO step start one on Kubernetes)")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        user_yaml = os.environ.get(f"{ENV_PREFIX}CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        user_source = None
        if user_yaml:
            path = Path(user_yaml)
            if not path.is_file():
                raise SettingsError(f"{ENV_PREFIX}CONFIG points to {path}, which is not a file")
            user_source = YamlConfigSettingsSource(settings_cls, yaml_file=path)
            sources.append(user_source)
        profile = _pick_profile(init_settings, env_settings, dotenv_settings, user_source)
        sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=PROFILES_DIR / f"{profile}.yaml"))
        sources.append(file_secret_settings)
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked (for logs and MLflow params)."""
        return _mask(self.model_dump(mode="python"))

    def flat_params(self) -> dict[str, str]:
        """Flattened ``section.key -> str`` view with secrets masked (MLflow params)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = "" if value is None else str(value)

        walk("", self.public_dict())
        return out


def _pick_profile(*sources: PydanticBaseSettingsSource | None) -> str:
    for source in sources:
        if source is None:
            continue
        value = source().get("profile")
        if value:
            if value not in ("tiny", "paper"):
                raise SettingsError(f"{env_name('profile')}={value!r} is not a profile: use tiny or paper")
            return str(value)
    return "tiny"


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def load_settings(**overrides: Any) -> Settings:
    """Resolve the settings tree; raise :class:`SettingsError` naming each variable to change.

    ``overrides`` are nested dicts or top-level values, e.g.
    ``load_settings(tools={"port": 9000})``; they beat every other source.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


SECRET_LIKE = re.compile(r"key|token|secret|passw|pwd|dsn|credential|auth|cookie|session|private", re.I)


def _field_at(loc: Sequence[Any]) -> Any | None:
    """The pydantic field a settings error points at (inside a dict-valued field: that field), or
    None for a key the tree does not have."""
    model: Any = Settings
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None:  # below a dict/list field: the field itself
            return field
        if part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


def _is_secret(loc: Sequence[Any], field: Any) -> bool:
    return any(SECRET_LIKE.search(str(p)) for p in loc) or "SecretStr" in str(getattr(field, "annotation", ""))


def _explain(exc: ValidationError) -> str:
    """One line per error naming the variable; the value given is echoed only for a known,
    non-secret key: an unknown key may be a misspelt secret (DMMS_JUDGE__APIKEY=sk-…) and the
    message lands in pod logs and the KFP UI."""
    lines = ["invalid settings:"]
    for err in exc.errors():
        loc = [p for p in err["loc"] if p not in ("__root__",)]
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            lines.append(f"  {msg}")
            continue
        field = _field_at(loc)
        given = err.get("input")
        if err["type"] == "extra_forbidden" or field is None:
            lines.append(f"  {env_name(*loc)}: not a setting{_did_you_mean(loc)} (its value is not shown)")
            continue
        if given is None or isinstance(given, dict):
            shown = ""
        elif _is_secret(loc, field) or isinstance(given, list | SecretStr):
            shown = " (value not shown)"
        else:
            shown = f" (got {given!r})"
        lines.append(f"  {env_name(*loc)}: {msg}{shown}")
    return "\n".join(lines)


def _did_you_mean(loc: Sequence[Any]) -> str:
    import difflib

    model: Any = Settings
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        model = fields[part].annotation
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]).lower(), names, n=1, cutoff=0.6)
    return f" (did you mean {env_name(*loc[:-1], close[0])}?)" if close else ""


def dump_yaml(settings: Settings) -> str:
    """Resolved settings as YAML, secrets masked (``dmms config show``)."""
    return yaml.safe_dump(settings.public_dict(), sort_keys=False)
