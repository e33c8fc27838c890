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


def test_a_misspelt_variable_is_one_line_naming_the_setting_it_resembles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_MAX_ROW", "5")  # read as nothing: max_rows stayed 10000 without a word
    with pytest.raises(ConfigError, match=r"^MADE_MAX_ROW is not a setting; did you mean MADE_MAX_ROWS\?"):
        load_settings()
    monkeypatch.delenv("MADE_MAX_ROW")
    monkeypatch.setenv("MADE_APIKEY", "s3cret-value")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MADE_API_KEY" in str(info.value) and "s3cret" not in str(info.value)  # a key is not echoed
    monkeypatch.delenv("MADE_APIKEY")
    # Names that resemble no setting pass: Kubernetes' service links, the compose files' own.
    for name in ("MADE_SERVICE_HOST", "MADE_PORT_8000_TCP_ADDR", "MADE_LB_PORT", "MADE_STORE_DIR", "MADE_IMAGE"):
        monkeypatch.setenv(name, "x")
    assert load_settings().max_rows == 10_000


def test_empty_host_and_store_mean_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # "" was a host that uvicorn binds on every interface, and "" a store of the current directory.
    monkeypatch.setenv("MADE_HOST", "")
    monkeypatch.setenv("MADE_STORE", " ")
    s = load_settings()
    assert s.host == "127.0.0.1" and s.store == Path("model_store")
    assert load_settings(host="").host == "127.0.0.1"


def test_an_unknown_provider_is_refused_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused at start-up in the parent process, not in each worker of MADE_WORKERS > 1 (which
    # died on it with a traceback and was started again, for ever).
    monkeypatch.setenv("MADE_PROVIDERS", "cuda,gpu")
    with pytest.raises(ConfigError, match=r"^MADE_PROVIDERS: unknown provider 'gpu' \(known: cuda, cpu"):
        load_settings()
    monkeypatch.setenv("MADE_PROVIDERS", "CUDA, CPUExecutionProvider")
    assert load_settings().providers == ["CUDA", "CPUExecutionProvider"]


def test_a_key_a_client_cannot_send_is_refused_without_repeating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # An Authorization header carries ASCII: 'sécret' could never match, and the playground's
    # fetch refuses to send it at all. The error names the variable, never the key.
    for variable in ("MADE_API_KEY", "MADE_ADMIN_KEY"):
        for key in ("sécret-1", "tab\tkey", " padded", "padded "):
            monkeypatch.setenv(variable, key)
            with pytest.raises(ConfigError) as info:
                load_settings()
            assert str(info.value) == (
                f"{variable}: must be printable ASCII with no space at either end, as an Authorization "
                "header carries it"
            )
        monkeypatch.setenv(variable, "Ok-key_1.2~")
        assert load_settings() is not None
        monkeypatch.delenv(variable)


def test_a_key_with_a_space_inside_is_still_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key with a space inside ('correct horse battery') was always sent and matched (the header's
    value after `Bearer `); a deployment that has one keeps starting."""
    from service.http.auth import carries_key

    monkeypatch.setenv("MADE_API_KEY", "correct horse battery")
    key = load_settings().api_key
    assert key is not None and carries_key("Bearer correct horse battery", key)
    assert not carries_key("Bearer correct", key)


def test_a_service_link_of_another_service_is_not_a_misspelt_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Service named made-ui (or made-db) in the namespace sets MADE_UI_PORT=tcp://...: close to
    # MADE_PORT by name, but no typo; it stopped made serve.
    for name in ("MADE_UI_PORT", "MADE_DB_PORT"):
        monkeypatch.setenv(name, "tcp://10.96.0.12:80")
    assert load_settings().port == 8000
    monkeypatch.setenv("MADE_DB_PORT", "5432")  # not a link's value: still named
    with pytest.raises(ConfigError, match="^MADE_DB_PORT is not a setting; did you mean MADE_PORT"):
        load_settings()


def test_thread_and_worker_counts_have_a_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    # MADE_THREADS=100000 started a server that was not ready after 30 s, holding 2 GB and growing;
    # MADE_WORKERS=100000 would fork a process, each loading every model, until memory ran out
    for variable in ("MADE_THREADS", "MADE_BLAS_THREADS", "MADE_WORKERS"):
        monkeypatch.setenv(variable, "100000")
        with pytest.raises(ConfigError, match=rf"^{variable}: Input should be less than or equal to 1024"):
            load_settings()
        monkeypatch.setenv(variable, "1024")
        assert load_settings() is not None
        monkeypatch.delenv(variable)
