"""app.web.control: a request that changes what the automation does must not be one a foreign web
page could make a trader's browser send (cross-site "simple" POSTs, DNS rebinding), and needs the
token when one is set; the settings refuse an exposed server without a token."""

from __future__ import annotations

import dataclasses

import pytest

import app.config as config
from app.config import Settings
from app.errors import ConfigError
from app.web.control import refusal

JSON = {"Content-Type": "application/json", "Host": "127.0.0.1:6066"}
TOKEN = "s3cret-token-of-24-chars"


def refused(settings: Settings | None = None, **headers: str) -> tuple[int, str] | None:
    given = {**JSON, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return refusal(settings or Settings(), "POST", {k: v for k, v in given.items() if v})


def test_the_pages_own_request_and_a_command_line_request_pass() -> None:
    assert refused() is None  # curl: no Origin
    assert refused(Origin="http://127.0.0.1:6066", Sec_Fetch_Site="same-origin") is None
    assert refused(Host="localhost:6066", Origin="http://localhost:6066") is None
    assert refused(Content_Type="application/json; charset=utf-8") is None


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_a_body_a_cross_site_page_can_send_without_a_preflight_is_refused(content_type: str) -> None:
    status, line = refused(Content_Type=content_type) or (0, "")
    assert status == 415
    assert "application/json" in line


def test_a_foreign_origin_or_a_cross_site_fetch_is_refused() -> None:
    for origin in ("http://evil.example", "http://127.0.0.1:8000", "http://127.0.0.1", "null"):
        status, line = refused(Origin=origin) or (0, "")
        assert status == 403, origin
        assert "Origin" in line
    assert (refused(Sec_Fetch_Site="cross-site") or (0,))[0] == 403


def test_a_rebound_host_name_is_refused_unless_allowed() -> None:
    status, line = refused(Host="evil.example:6066", Origin="http://evil.example:6066") or (0, "")
    assert status == 403
    assert "WEB_ALLOWED_HOSTS" in line
    allowed = dataclasses.replace(Settings(), web_allowed_hosts=("desk.internal",))
    assert refused(allowed, Host="desk.internal:6066", Origin="http://desk.internal:6066") is None
    bound = dataclasses.replace(Settings(), web_host="10.0.0.5", web_control_token=TOKEN)
    assert refused(bound, Host="10.0.0.5:6066", Authorization=f"Bearer {TOKEN}") is None
    assert refused(bound, Host="evil.example:6066", Authorization=f"Bearer {TOKEN}") is not None
    # every address, no names listed: the host cannot be known, the token guards
    wildcard = dataclasses.replace(Settings(), web_host="0.0.0.0", web_control_token=TOKEN)  # noqa: S104
    assert refused(wildcard, Host="box.lan:6066", Authorization=f"Bearer {TOKEN}") is None


def test_with_a_token_set_a_request_without_it_or_with_another_is_refused() -> None:
    guarded = dataclasses.replace(Settings(), web_control_token=TOKEN)
    assert refused(guarded, Authorization=f"Bearer {TOKEN}") is None
    for given in ("", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"):
        status, line = refused(guarded, Authorization=given) or (0, "")
        assert status == 401, given
        assert TOKEN not in line


def test_an_exposed_server_needs_a_long_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_HOST", "0.0.0.0")  # noqa: S104
    with pytest.raises(ConfigError, match="WEB_CONTROL_TOKEN"):
        config.load()
    monkeypatch.setenv("WEB_CONTROL_TOKEN", "short")
    with pytest.raises(ConfigError, match="16 characters"):
        config.load()
    monkeypatch.setenv("WEB_CONTROL_TOKEN", TOKEN)
    loaded = config.load()
    assert loaded.web_control_token == TOKEN
    assert TOKEN not in repr(loaded)
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        monkeypatch.setenv("WEB_HOST", loopback)
        monkeypatch.delenv("WEB_CONTROL_TOKEN")
        assert config.load().web_control_token is None
        monkeypatch.setenv("WEB_CONTROL_TOKEN", TOKEN)
