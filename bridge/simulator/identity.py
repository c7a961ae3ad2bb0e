"""Device IDs of the current (Device Management) dialect.

The service gives every device a 32-hex-character device ID and keeps the name the
device registered with as its ``endpoint_name``. The emulator derives the ID from the
name (the first 32 hex digits of its SHA-256), so every run gives the same IDs and a
test can compute one without asking.
"""

from __future__ import annotations

import hashlib


def device_id(endpoint_name: str) -> str:
    """The device ID of the device registered as ``endpoint_name``: 32 lower-case hex."""
    digest = hashlib.sha256(endpoint_name.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]
