"""The settings registry: one declaration per setting, validated, with one precedence rule."""

from __future__ import annotations

import pytest

from corral.shared import settings as registry
from corral.shared.settings import REGISTRY, SettingError, Settings, Sources, resolve


def test_defaults_come_from_the_declarations():
    settings = Settings()
    for name, declared in REGISTRY.items():
        assert getattr(settings, name) == declared.default


def test_gunicorn_spellings_are_kept():
    flags = {flag for declared in REGISTRY.values() for flag in declared.flags}
    for flag in (
        "-w",
        "--workers",
        "-b",
        "--bind",
        "--keep-alive",
        "--backlog",
        "--threads",
        "--graceful-timeout",
        "--limit-request-line",
        "--limit-request-fields",
        "--limit-request-field-size",
        "--forwarded-allow-ips",
        "--access-logfile",
        "--access-logformat",
        "--reuse-port",
    ):
        assert flag in flags


def test_values_are_converted_from_strings():
    settings = Settings(
        workers="4",
        keepalive="2.5",
        limit_request_body="10M",
        reuse_port="yes",
        forwarded_allow_ips="10.0.0.1, unix",
        bind="127.0.0.1:1,unix:/tmp/s",
    )
    assert settings.workers == 4
    assert settings.keepalive == 2.5
    assert settings.limit_request_body == 10 * 1024 * 1024
    assert settings.reuse_port is True
    assert settings.forwarded_allow_ips == ("10.0.0.1", "unix")
    assert settings.bind == ("127.0.0.1:1", "unix:/tmp/s")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"workers": "many"}, "invalid value for --workers: expected an integer, got 'many'"),
        ({"workers": 0}, "invalid value for --workers: must be >= 1, got 0"),
        ({"keepalive": -1}, "invalid value for --keep-alive: must be >= 0"),
        ({"lifespan": "maybe"}, "expected one of auto, on, off"),
        ({"limit_request_body": "lots"}, "expected a size in bytes"),
        ({"reuse_port": "perhaps"}, "expected true/false"),
        ({"http": "3"}, "invalid value for --http: expected one of auto, 1, 2"),
        ({"http2_max_frame_size": 1024}, "invalid value for --http2-max-frame-size: expected 16384 to 16777215"),
    ],
)
def test_bad_values_name_the_setting_in_one_line(values, message):
    with pytest.raises(SettingError) as info:
        Settings(**values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_names_suggest_the_closest_setting():
    with pytest.raises(SettingError, match="unknown setting 'worker'; did you mean 'workers'"):
        Settings(worker=2)


def test_environment_variables_are_generated_from_names():
    assert REGISTRY["max_applications"].env == "CORRAL_MAX_APPLICATIONS"
    environ = {
        "CORRAL_WORKERS": "3",
        "CORRAL_KEEPALIVE": "7",
        "HOME": "/root",
        "CORRAL_SRC": "/src",
        "CORRAL_TREADS": "3",
        "CORRAL_CMD_ARGS": "-w 2",
    }
    # A CORRAL_* name that is no setting belongs to someone else's script: skipped, and listed apart.
    assert registry.from_env(environ) == {"workers": 3, "keepalive": 7.0}
    assert registry.unknown_env(environ) == ["CORRAL_SRC", "CORRAL_TREADS"]


def test_bad_environment_values_are_all_collected():
    with pytest.raises(SettingError, match=r"invalid value for --workers .from environment variable CORRAL_WORKERS"):
        registry.from_env({"CORRAL_WORKERS": "lots"})
    problems: list[str] = []
    assert registry.from_env({"CORRAL_WORKERS": "lots", "CORRAL_THREADS": "0", "CORRAL_BACKLOG": "9"}, problems) == {
        "backlog": 9
    }
    assert len(problems) == 2 and "CORRAL_WORKERS" in problems[0] and "CORRAL_THREADS" in problems[1]


def test_gunicorns_zero_limits_are_accepted():
    settings = Settings(limit_request_line=0, limit_request_field_size="0", limit_request_fields=0)
    assert (settings.limit_request_line, settings.limit_request_field_size, settings.limit_request_fields) == (0, 0, 0)


def test_precedence_is_cli_then_env_then_file_then_default():
    sources = Sources(
        file={"workers": 2, "threads": 3, "backlog": 10},
        env={"workers": 4, "threads": 5},
        cli={"workers": 6},
    )
    settings = resolve(sources)
    assert (settings.workers, settings.threads, settings.backlog) == (6, 5, 10)
    assert settings.keepalive == REGISTRY["keepalive"].default


def test_assignment_is_validated_and_replace_copies():
    settings = Settings()
    settings.workers = "3"
    assert settings.workers == 3
    with pytest.raises(SettingError):
        settings.workers = "x"
    with pytest.raises(SettingError):
        settings.wokers = 3
    other = settings.replace(threads=2)
    assert other.threads == 2 and settings.threads == REGISTRY["threads"].default
