"""Throwaway certificates for TLS tests, made with the ``openssl`` command-line tool.

A test that proves "TLS with server verification on" needs a CA of its own, a server
certificate that verifies for ``127.0.0.1`` and ``localhost``, and a client certificate for
mutual TLS; a second, unrelated CA proves that foreign certificates are refused. The
``openssl`` tool is present wherever Mosquitto is, so no Python dependency is needed.

Keys are EC P-256: generating them takes milliseconds, unlike RSA, and every TLS stack the
project meets (OpenSSL in Mosquitto and in Python) accepts them.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Short-lived on purpose: nothing made here should be usable after the test run.
DEFAULT_DAYS = 2
SERVER_HOSTS = ("localhost", "127.0.0.1")


def openssl_binary() -> str:
    found = shutil.which("openssl")
    if not found:
        raise RuntimeError("the openssl command-line tool is not installed")
    return found


def _openssl(*args: str | Path) -> None:
    """Run openssl; on failure raise with its own error text (it explains itself well)."""
    done = subprocess.run(
        [openssl_binary(), *map(str, args)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _new_key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)
    return path


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class CertKey:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """One CA and the certificates it signed, all in ``directory``."""

    directory: Path
    ca: CertKey
    server: CertKey
    client: CertKey

    @property
    def ca_cert(self) -> Path:
        return self.ca.cert


def make_ca(
    directory: Path, name: str = "connector-bridge test CA", days: int = DEFAULT_DAYS
) -> CertKey:
    """A self-signed CA allowed to sign leaf certificates only (path length 0)."""
    key = _new_key(directory / "ca.key")
    cert = directory / "ca.crt"
    _openssl(
        "req", "-new", "-x509", "-key", key, "-out", cert, "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return CertKey(cert, key)


def issue(
    ca: CertKey,
    directory: Path,
    stem: str,
    common_name: str,
    *,
    server_hosts: tuple[str, ...] = (),
    days: int = DEFAULT_DAYS,
) -> CertKey:
    """A leaf certificate signed by ``ca``.

    With ``server_hosts`` it is a server certificate whose subjectAltName lists those
    names and addresses (clients match the SAN, not the CN); without, a client one.
    """
    key = _new_key(directory / f"{stem}.key")
    csr = directory / f"{stem}.csr"
    cert = directory / f"{stem}.crt"
    ext = directory / f"{stem}.ext"
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
    if server_hosts:
        sans = ",".join(f"IP:{h}" if _is_address(h) else f"DNS:{h}" for h in server_hosts)
        lines += ["extendedKeyUsage=serverAuth", f"subjectAltName={sans}"]
    else:
        lines += ["extendedKeyUsage=clientAuth"]
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={common_name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-out", cert,
        "-days", str(days), "-set_serial", str(secrets.randbits(63)), "-extfile", ext,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return CertKey(cert, key)


def make_test_pki(
    directory: Path | None = None,
    *,
    ca_name: str = "connector-bridge test CA",
    client_name: str = "connector-bridge",
    server_hosts: tuple[str, ...] = SERVER_HOSTS,
) -> Pki:
    """A fresh CA with a server certificate for ``server_hosts`` and one client certificate.

    ``directory`` defaults to a new temporary directory, which the caller removes.
    """
    directory = directory or Path(tempfile.mkdtemp(prefix="pki-"))
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, ca_name)
    server = issue(ca, directory, "server", server_hosts[0], server_hosts=server_hosts)
    client = issue(ca, directory, "client", client_name)
    return Pki(directory, ca, server, client)
