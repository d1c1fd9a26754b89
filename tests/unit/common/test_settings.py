"""The settings tree: sources, profiles, readable errors, masked secrets."""

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from components.common.settings import SettingsError, dump_yaml, load_settings


def test_defaults_are_the_tiny_profile():
    s = load_settings()
    assert s.profile == "tiny"
    assert s.storage.root == ".dmms/store"
    assert s.tracking.uri.startswith("sqlite:///")
    assert s.tools.host == "127.0.0.1"
    assert s.model.device == "cpu"


def test_env_vars_nest_with_double_underscore(monkeypatch):
    monkeypatch.setenv("DMMS_TOOLS__PORT", "9123")
    monkeypatch.setenv("DMMS_AGENT__MAX_TOOL_CALLS", "3")
    s = load_settings()
    assert s.tools.port == 9123
    assert s.agent.max_tool_calls == 3


def test_wrong_type_names_the_variable(monkeypatch):
    monkeypatch.setenv("DMMS_TOOLS__PORT", "eighty")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "DMMS_TOOLS__PORT" in str(info.value)
    assert "eighty" in str(info.value)


def test_out_of_range_names_the_variable(monkeypatch):
    monkeypatch.setenv("DMMS_TOOLS__TOP_K", "0")
    with pytest.raises(SettingsError, match="DMMS_TOOLS__TOP_K"):
        load_settings()


def test_the_client_timeout_outwaits_the_server_deadline(monkeypatch):
    """One place states the deadline (tools.deadline_s); the client's timeout follows it, and a client
    that would give up first is refused with both variables named."""
    s = load_settings(tools={"deadline_s": 20})
    assert s.tools.client_timeout_s == 20 + 15.0
    assert load_settings(tools={"deadline_s": 20, "timeout_s": 25}).tools.client_timeout_s == 25
    monkeypatch.setenv("DMMS_TOOLS__TIMEOUT_S", "30")
    with pytest.raises(SettingsError) as info:
        load_settings(tools={"deadline_s": 45})
    assert "DMMS_TOOLS__TIMEOUT_S=30.0 must exceed DMMS_TOOLS__DEADLINE_S=45.0" in str(info.value)


def test_unknown_key_is_refused_not_ignored():
    with pytest.raises(SettingsError, match="DMMS_TOOLS__PROT"):
        load_settings(tools={"prot": 1})


def test_paper_profile_without_secrets_names_each_missing_variable(monkeypatch):
    monkeypatch.setenv("DMMS_PROFILE", "paper")
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert "DMMS_TOOLS__TOKEN" in msg
    assert "DMMS_STORAGE__ACCESS_KEY" in msg
    assert "DMMS_STORAGE__SECRET_KEY" in msg


def test_paper_profile_sets_paper_defaults(monkeypatch):
    monkeypatch.setenv("DMMS_PROFILE", "paper")
    monkeypatch.setenv("DMMS_TOOLS__TOKEN", "tok")
    monkeypatch.setenv("DMMS_STORAGE__ACCESS_KEY", "ak")
    monkeypatch.setenv("DMMS_STORAGE__SECRET_KEY", "sk")
    s = load_settings()
    assert s.model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert s.model.dtype == "float32" and s.grpo.bf16  # fp32 master weights, bf16 compute
    assert s.storage.root.startswith("s3://")
    assert s.agent.max_image_searches == 1 and s.agent.max_tool_calls == 10


def test_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("DMMS_PROFILE", "huge")
    with pytest.raises(SettingsError, match="DMMS_PROFILE"):
        load_settings()


def test_precedence_kwargs_over_env_over_dotenv_over_user_yaml(monkeypatch, tmp_path):
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("tools:\n  port: 7001\n  top_k: 7\nagent:\n  max_turns: 4\n")
    (tmp_path / ".env").write_text("DMMS_TOOLS__PORT=7002\nDMMS_AGENT__MAX_TURNS=5\n")
    monkeypatch.setenv("DMMS_CONFIG", str(user_yaml))
    monkeypatch.setenv("DMMS_TOOLS__PORT", "7003")
    s = load_settings()
    assert s.tools.port == 7003          # env beats .env and yaml
    assert s.agent.max_turns == 5        # .env beats yaml
    assert s.tools.top_k == 7            # yaml beats profile/defaults
    assert load_settings(tools={"port": 7004}).tools.port == 7004


def test_user_yaml_can_choose_the_profile(monkeypatch, tmp_path):
    user_yaml = tmp_path / "p.yaml"
    user_yaml.write_text("profile: paper\ntools:\n  token: t\nstorage:\n  access_key: a\n  secret_key: b\n")
    monkeypatch.setenv("DMMS_CONFIG", str(user_yaml))
    assert load_settings().model.name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_missing_user_yaml_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DMMS_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(SettingsError, match="DMMS_CONFIG"):
        load_settings()


def test_secrets_are_masked_everywhere():
    s = load_settings(tools={"token": "s3cr3t-token"}, judge={"api_key": "judge-key-9"})
    assert s.tools.token.get_secret_value() == "s3cr3t-token"
    for text in (dump_yaml(s), repr(s), str(s.flat_params()), str(s.public_dict())):
        assert "s3cr3t-token" not in text
        assert "judge-key-9" not in text
    assert s.flat_params()["tools.token"] == "**********"


def test_s3_root_requires_endpoint_and_keys():
    with pytest.raises(SettingsError) as info:
        load_settings(storage={"root": "s3://bucket"})
    assert "DMMS_STORAGE__ENDPOINT" in str(info.value)


def test_web_backend_requires_its_key():
    with pytest.raises(SettingsError, match="DMMS_TOOLS__WEB_API_KEY"):
        load_settings(tools={"text_backend": "brave"})


def test_cli_config_show_masks_and_fails_clearly(monkeypatch):
    from typer.testing import CliRunner

    from components.cli import _register, app

    _register()
    runner = CliRunner()
    monkeypatch.setenv("DMMS_TOOLS__TOKEN", "abc-secret")
    out = runner.invoke(app, ["config", "show"])
    assert out.exit_code == 0, out.output
    assert "abc-secret" not in out.output
    assert "profile: tiny" in out.output


def test_use_vllm_needs_a_server_url_or_the_launcher(monkeypatch):
    with pytest.raises(SettingsError) as info:
        load_settings(grpo={"use_vllm": True})
    assert "DMMS_GRPO__VLLM_SERVER_BASE_URL" in str(info.value)
    assert "DMMS_GRPO__LAUNCH_ROLLOUT_SERVERS" in str(info.value)
    assert load_settings(grpo={"use_vllm": True, "vllm_server_base_url": "http://r:8000"}).grpo.use_vllm
    launched = load_settings(grpo={"use_vllm": True, "launch_rollout_servers": True})
    assert launched.grpo.vllm_server_base_url is None  # the launcher fills it in
    for key, value in {"DMMS_PROFILE": "paper", "DMMS_TOOLS__TOKEN": "t", "DMMS_STORAGE__ACCESS_KEY": "a",
                       "DMMS_STORAGE__SECRET_KEY": "s"}.items():
        monkeypatch.setenv(key, value)
    paper = load_settings().grpo
    assert paper.use_vllm and paper.launch_rollout_servers and paper.vllm_server_base_url is None


# ---- settings errors never echo a secret ----------------------------------------------------------
# The message of a SettingsError lands in pod logs and the KFP UI: a value is shown only for a known,
# non-secret key (DMMS_TOOLS__PORT=x says "got 'x'"); an unknown key may be a misspelt secret.

_SECTIONS = ["tools", "judge", "teacher", "storage", "tracking", "pipelines", "grpo", "model"]
_SECRETISH = ["api_key", "apikey", "token", "secret_key", "password", "web_api_key", "dsn", "access_key",
              "image_api_key", "auth_token"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(_SECTIONS),
       key=st.one_of(st.sampled_from(_SECRETISH), st.from_regex(r"[a-z]{2,8}(_[a-z]{2,8})?", fullmatch=True)),
       value=st.from_regex(r"sk-[A-Za-z0-9]{12,24}", fullmatch=True))
def test_no_secret_or_unknown_value_appears_in_a_settings_error(monkeypatch, section, key, value):
    from components.common.settings import Settings

    known = key in Settings.model_fields[section].annotation.model_fields
    secretish = bool(re.search(r"key|token|secret|passw|pwd|dsn|credential|auth", key))
    assume(secretish or not known)  # known non-secret keys may echo what they were given
    with monkeypatch.context() as m:
        m.setenv(f"DMMS_{section.upper()}__{key.upper()}", value)
        try:
            load_settings()
        except SettingsError as exc:
            assert value not in str(exc)
            assert f"DMMS_{section.upper()}__{key.upper()}" in str(exc)  # still names the variable


def test_a_misspelt_secret_is_named_with_a_suggestion_and_never_echoed(monkeypatch):
    monkeypatch.setenv("DMMS_JUDGE__APIKEY", "sk-live-0123456789abcdef")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    text = str(exc.value)
    assert "sk-live-0123456789abcdef" not in text
    assert "DMMS_JUDGE__APIKEY: not a setting (did you mean DMMS_JUDGE__API_KEY?)" in text


def test_a_known_plain_setting_still_shows_what_it_got(monkeypatch):
    monkeypatch.setenv("DMMS_TOOLS__PORT", "eighty")
    with pytest.raises(SettingsError, match=r"DMMS_TOOLS__PORT: .*integer.*\(got 'eighty'\)"):
        load_settings()
