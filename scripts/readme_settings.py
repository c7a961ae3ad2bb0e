"""Rewrite the README's settings table from the code (``Settings.markdown_table()``).

Run after adding or changing a setting: ``.venv/bin/python scripts/readme_settings.py``.
tests/test_settings_readme.py fails while the README and the code differ.
"""

from __future__ import annotations

import re
from pathlib import Path

from bridge.service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- settings:start -->\n).*?(<!-- settings:end -->)", re.S)


def main() -> None:
    text = README.read_text()
    if not BLOCK.search(text):
        raise SystemExit("README.md has no <!-- settings:start --> ... <!-- settings:end --> block")
    README.write_text(BLOCK.sub(lambda m: m[1] + Settings.markdown_table() + "\n" + m[2], text))


if __name__ == "__main__":
    main()
