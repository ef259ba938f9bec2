from pathlib import Path

import pytest

from protege.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROTEGE_CONFIG", raising=False)
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))


def test_environment_and_nested_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROTEGE_NATS_URL", "nats://10.0.0.1:4222,nats://10.0.0.2:4222")
    monkeypatch.setenv("PROTEGE_TEACHER__URL", "https://llm.example/v1")
    monkeypatch.setenv("PROTEGE_TEACHER__API_KEY", "sk-secret")
    settings = load_settings()
    assert settings.nats_url.startswith("nats://10.0.0.1")
    assert settings.teacher.api_key is not None and settings.teacher.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(settings) and "sk-secret" not in settings.model_dump_json()
    assert settings.artifact_store_url == (tmp_path / "home" / "artifacts").resolve().as_uri()
    assert settings.model_dir == tmp_path / "home" / "models"


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_below_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"protege{suffix}"
    if suffix == ".yaml":
        path.write_text(
            "artifact_store: s3://bucket/prefix\nteacher:\n  model: big\nnats_url: nats://file:1\n"
        )
    else:
        path.write_text(
            'artifact_store = "s3://bucket/prefix"\nnats_url = "nats://file:1"\n[teacher]\nmodel = "big"\n'
        )
    monkeypatch.setenv("PROTEGE_CONFIG", str(path))
    monkeypatch.setenv("PROTEGE_NATS_URL", "nats://env:2")
    settings = load_settings()
    assert settings.artifact_store_url == "s3://bucket/prefix"
    assert settings.teacher.model == "big"
    assert settings.nats_url == "nats://env:2"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"PROTEGE_NATS_URL": "http://x:4222"},
            "PROTEGE_NATS_URL (nats_url): 'http://x:4222' is not a NATS URL; write e.g.",
        ),
        (
            {"PROTEGE_ARTIFACT_STORE": "/plain/path"},
            "PROTEGE_ARTIFACT_STORE (artifact_store): '/plain/path' is not an artifact store URL",
        ),
        (
            {"PROTEGE_TEACHER__URL": "not a url"},
            "PROTEGE_TEACHER__URL (teacher.url): Input should be a valid URL",
        ),
        (
            {"PROTEGE_TEACHER__TIMEOUT_SECONDS": "-1"},
            "PROTEGE_TEACHER__TIMEOUT_SECONDS (teacher.timeout_seconds)",
        ),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert expected in str(raised.value)


def test_bad_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROTEGE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not a file; create it or unset the variable"):
        load_settings()
    path = tmp_path / "c.yaml"
    path.write_text("nats_urll: nats://x:1\n")
    monkeypatch.setenv("PROTEGE_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"PROTEGE_NATS_URLL .*is not a Protégé setting"):
        load_settings()


def test_a_nats_identity_comes_whole_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from protege.capture.connection import NatsEndpoint

    monkeypatch.setenv("PROTEGE_NATS_AUTH__USER", "gateway")
    with pytest.raises(ConfigError, match=r"nats_auth.user and nats_auth.password go together"):
        load_settings()
    monkeypatch.setenv("PROTEGE_NATS_AUTH__PASSWORD", "s3cret-pw")
    monkeypatch.setenv("PROTEGE_POOL_TOKEN", "t0ken-value")
    settings = load_settings(
        nats_auth={"user": "gateway", "password": "s3cret-pw", "credentials_dir": tmp_path}
    )
    assert "s3cret-pw" not in repr(settings) and "t0ken-value" not in repr(settings)
    endpoint = NatsEndpoint.from_settings(settings, "curator")  # a pod has one identity: its user wins
    assert (endpoint.user, endpoint.password, str(endpoint)) == ("gateway", "s3cret-pw", settings.nats_url)
    assert "s3cret-pw" not in repr(endpoint)
