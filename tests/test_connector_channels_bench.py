"""The channel benchmark (:mod:`bridge.bench.channels`) in its quick mode: figures
printed, not asserted; what is asserted is that every notification arrived.

Run alone with ``-s`` to see them; ``CHANNELS_BENCH_N`` sets the burst (default 2,000).
"""

from __future__ import annotations

import os

import pytest

from bridge.bench.channels import CHANNELS, burst_rate, compare, main
from bridge.connector import connector
from bridge.simulator import Emulator

N = int(os.environ.get("CHANNELS_BENCH_N", "2000"))


@pytest.mark.parametrize("chunk", [None, 100])
def test_every_channel_carries_the_whole_burst(chunk: int | None) -> None:
    summary = compare(N, runs=1, chunk=chunk)
    for name in CHANNELS:
        (result,) = summary["results"][name]
        assert result["received"] == N and result["rate"] > 0, (name, result)
    print(
        f"\nchannels bench, burst of {N}, {chunk or 10_000} a message: "
        + ", ".join(f"{name} {summary[f'{name}_rate']:.0f}/s" for name in CHANNELS)
    )


def test_burst_rate_wants_a_running_channel_and_a_positive_burst() -> None:
    with Emulator(drift=False, api="current") as emu:
        c = connector(emu.token, emu.url, api="current", timeout=5.0)
        try:
            with pytest.raises(ValueError):
                burst_rate(c, emu, 0)
            assert c.startWebsocket() == "connected"
            result = burst_rate(c, emu, 10)
        finally:
            c.close()
    assert result["received"] == 10 and result["seconds"] > 0


def test_the_command_line_prints_a_line_per_channel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["200", "--runs", "1", "--chunk", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("burst of 200, 100 entries a message")
    assert [line.split()[0] for line in out[1:]] == list(CHANNELS)
