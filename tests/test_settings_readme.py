"""The README's settings table must match the code (``Settings.markdown_table()``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_matches_the_code() -> None:
    rows = [
        line.rstrip() for line in README.read_text().splitlines() if line.startswith("| `BRIDGE_")
    ]
    if not rows:
        pytest.skip("the README has no settings table yet (paste Settings.markdown_table())")
    expected = [line for line in Settings.markdown_table().splitlines() if line.startswith("| `")]
    missing = sorted(set(expected) - set(rows))
    stale = sorted(set(rows) - set(expected))
    assert not missing and not stale, (
        "README settings table differs from the code; regenerate it with "
        "`python -c 'from bridge.service.settings import Settings; "
        "print(Settings.markdown_table())'`\n"
        f"missing or changed: {missing}\nnot in the code: {stale}"
    )


def test_table_lists_every_setting_once() -> None:
    table = Settings.markdown_table().splitlines()
    assert len(table) == 2 + len(Settings.model_fields)
    assert all(
        f"`--{name.replace('_', '-')}`" in "\n".join(table) for name in Settings.model_fields
    )
