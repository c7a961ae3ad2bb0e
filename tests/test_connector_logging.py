"""debug() switches the library's own logger, and the access key never shows: not in a
log line (at DEBUG, urllib3 included), not in an error text, not in any repr."""

from __future__ import annotations

import logging

import pytest

from bridge.connector import asyncResult, connector
from bridge.simulator import Emulator
from tests.support.clients import client_for
from tests.support.ports import free_port
from tests.test_connector_calls import METHODS

SECRET = "tok-SECRET-4f1c9e"


def test_debug_switches_only_the_library_logger(capsys: pytest.CaptureFixture[str]) -> None:
    lib = logging.getLogger("bridge.connector")
    root_handlers = list(logging.getLogger().handlers)
    c = connector("k", "http://127.0.0.1:9")
    try:
        c.debug(True)
        c.debug(True, "INFO")  # again: still one handler of ours
        ours = [h for h in lib.handlers if h.get_name() == "bridge.connector.debug"]
        assert len(ours) == 1 and lib.level == logging.INFO
        assert logging.getLogger().handlers == root_handlers
        c.debug(True, "WARN")
        assert lib.level == logging.WARNING
        with pytest.raises(ValueError, match="unknown level"):
            c.debug(True, "LOUD")
        c.debug(False)
        assert lib.level == logging.NOTSET
        assert not [h for h in lib.handlers if h.get_name() == "bridge.connector.debug"]
        assert any(isinstance(h, logging.NullHandler) for h in lib.handlers)
    finally:
        c.debug(False)
        c.close()
    assert "connector debugging at level INFO" in capsys.readouterr().err


def test_debug_output_describes_calls(
    emulator: Emulator, capsys: pytest.CaptureFixture[str], fast_http: bool
) -> None:
    with client_for(emulator, poll=False, fastHttp=fast_http) as c:
        c.debug(True)
        try:
            c.getEndpoints()
        finally:
            c.debug(False)
    err = capsys.readouterr().err
    assert "GET http://127.0.0.1" in err and "/v2/endpoints -> 200" in err


def _everything(c: connector) -> list[asyncResult]:
    return [call(c) for call, _, _, _ in METHODS.values()]


def test_access_key_never_appears(
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    fast_http: bool,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root: urllib3's debug lines too
    texts: list[str] = []
    emu_secret = Emulator(token=SECRET, pull_timeout=1.0).start()
    try:
        # Accepted key: every method, async answers, the long-poll thread.
        with client_for(emu_secret, fastHttp=fast_http) as c:
            c.debug(True)
            results = _everything(c)
            results.append(c.getResourceValue("node-001", "/3303/0/5700"))
            assert results[-1].wait(5.0)
            texts += [repr(c), str(vars(c)), repr(c._session.headers is not None)]
        # Refused key (the emulator fixture wants another one): 401 everywhere, and the
        # long-poll thread logs its plain "refused the access key" error.
        with connector(SECRET, emulator.url, backoffMax=0.5, fastHttp=fast_http) as c:
            results += _everything(c)
            c.startLongPolling()
            assert c.longPollStats()["running"]
            threading_wait(0.6)
            c.stopLongPolling()
        # A server that hangs, and one that is not there.
        emu_secret.set_fault(hang={"route": "endpoints"})
        with connector(SECRET, emu_secret.url, timeout=0.3, fastHttp=fast_http) as c:
            results.append(c.getEndpoints())
        with connector(
            SECRET, f"http://127.0.0.1:{free_port()}", timeout=0.5, fastHttp=fast_http
        ) as c:
            results.append(c.getEndpoints())
            c.startLongPolling()
            threading_wait(0.3)
            c.stopLongPolling()
        # A key that is not a valid header value: requests' error would quote it.
        for bad_key in (SECRET + "\n", f" {SECRET}", f"{SECRET}\x00"):
            with pytest.raises(ValueError) as refused:
                connector(bad_key, emu_secret.url, fastHttp=fast_http)
            texts.append(str(refused.value))
    finally:
        logging.getLogger("bridge.connector").setLevel(logging.NOTSET)
        for h in list(logging.getLogger("bridge.connector").handlers):
            if h.get_name() == "bridge.connector.debug":
                logging.getLogger("bridge.connector").removeHandler(h)
        emu_secret.stop()
    texts += [repr(r) for r in results]
    texts += [str(r.error) + repr(r.error) for r in results if r.error]
    texts += [str(r.result) for r in results]
    assert any("401" in t for t in texts) and any("request_timeout" in t for t in texts)
    assert "refused the access key" in caplog.text
    assert len(caplog.records) > 50  # there was plenty of logging to leak into
    for text in [caplog.text, capsys.readouterr().err, *texts]:
        assert SECRET not in text


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def test_redaction_covers_escaped_forms() -> None:
    c = connector(SECRET, "http://127.0.0.1:9")
    try:
        text = f"header value 'Bearer {SECRET}' and {SECRET!r}"
        assert SECRET not in c._redact(text)
        assert "<secret>" in c._redact(text)
    finally:
        c.close()
