"""Every setting is documented, and settings parse the way the docs say."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from wshub.config import Settings

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_configuration_reference(name: str) -> None:
    assert f"`WS_{name.upper()}`" in DOC


def test_lists_are_comma_separated_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("WS_JWT_ALGORITHMS", "HS256,HS512")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.jwt_algorithms == ["HS256", "HS512"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_JWT_ALGORITHMS", "none"),
        ("WS_STORE_URL", "mongodb://x"),
        ("WS_PATH", "no-slash"),
        ("WS_RATE_LIMIT", "0"),
        ("WS_HEARTBEAT_INTERVAL", "5"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert name.removeprefix("WS_").lower() in str(info.value).lower()
