"""Settings: MADE_* environment variables, read in one place, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from made.core.errors import ConfigError
from service.settings import Settings, load_settings


def test_environment_variables_are_read_with_the_made_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_STORE", "/srv/models")
    monkeypatch.setenv("MADE_PROVIDERS", "cuda, cpu")
    monkeypatch.setenv("MADE_MAX_ROWS", "12")
    monkeypatch.setenv("MADE_API_KEY", "secret")
    monkeypatch.setenv("MADE_LOG_LEVEL", "debug")
    s = Settings()
    assert s.store == Path("/srv/models") and s.providers == ["cuda", "cpu"]
    assert s.max_rows == 12 and s.log_level == "DEBUG"
    assert s.api_key is not None and s.api_key.get_secret_value() == "secret"
    assert "secret" not in repr(s)  # the key never reaches a log through the settings


def test_empty_api_key_and_default_model_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_API_KEY", "")
    monkeypatch.setenv("MADE_DEFAULT_MODEL", "")
    monkeypatch.setenv("MADE_DATA_DIR", "")
    s = Settings()
    assert s.api_key is None and s.default_model is None and s.data_dir is None
    monkeypatch.setenv("MADE_DATA_DIR", "/srv/data")
    assert Settings().data_dir == Path("/srv/data")


def test_explicit_values_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_STORE", "/from/env")
    assert load_settings(store=Path("/from/cli"), workers=None).store == Path("/from/cli")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MADE_MAX_ROWS", "many", "MADE_MAX_ROWS: Input should be a valid integer"),
        ("MADE_BATCH_DELAY_MS", "-1", "MADE_BATCH_DELAY_MS: Input should be greater than or equal"),
        ("MADE_LOG_LEVEL", "loud", "MADE_LOG_LEVEL: must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got 'loud')"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_bad_option_is_named_as_the_option_and_a_bad_variable_as_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"^--port: Input should be less than or equal to 65535 \(got 99999\)$"):
        load_settings(port=99999)
    monkeypatch.setenv("MADE_WORKERS", "0")
    with pytest.raises(ConfigError, match=r"^MADE_WORKERS: Input should be greater than or equal to 1"):
        load_settings(port=8000, workers=None)


def _blas_threads() -> set[int]:
    """numpy's BLAS threads as this thread and a fresh thread (where engine calls run) see them."""
    import threading

    from threadpoolctl import threadpool_info

    seen: list[int] = []

    def read() -> None:
        seen.extend(int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas")

    read()
    worker = threading.Thread(target=read)
    worker.start()
    worker.join()
    return set(seen)


def test_blas_threads_are_capped_for_the_process_when_the_app_is_built(tiny_store: Path) -> None:
    """Settings.blas_threads holds for the process from create_app on; 0 leaves it as it was."""
    from helpers import cpu_registry
    from threadpoolctl import threadpool_limits

    from service.http.app import create_app

    registry = cpu_registry(tiny_store)
    with threadpool_limits(limits=2, user_api="blas"):  # a known start, whatever the machine's cores
        assert _blas_threads() == {2}
        create_app(Settings(store=tiny_store), registry)
        assert _blas_threads() == {1}  # the default
        create_app(Settings(store=tiny_store, blas_threads=3), registry)
        assert _blas_threads() == {3}
        create_app(Settings(store=tiny_store, blas_threads=0), registry)
        assert _blas_threads() == {3}  # 0: the library's setting, untouched
