"""A throwaway PKI for the lab and the tests, made with the ``openssl`` CLI.

Invariants:

- Keys are EC (prime256v1): generating one takes a millisecond, where RSA-2048 takes
  tens; with ``dh none`` OpenVPN then uses ECDHE and needs no DH parameters.
- Server certificates carry ``extendedKeyUsage = serverAuth`` and client certificates
  ``clientAuth``, so clients may use ``remote-cert-tls server`` (and the server
  ``remote-cert-tls client``): a client certificate cannot impersonate a server.
- Nothing here is secret-grade: the CA key sits next to the certificates. It is for
  namespaces on one box, never for production.
- A server certificate gets a ``subjectAltName`` only when :func:`make_pki` is
  given names for it (``san``): TLS clients that check host names (the AMQP bus)
  need one; OpenVPN checks the CN and the usage, so the default is none.
- Independent certificates are signed in parallel (one openssl process each), which
  keeps 3 servers + 6 clients well under a second.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

DAYS = 3650
CURVE = "prime256v1"


@dataclass(frozen=True)
class CertKey:
    """One identity: its certificate and private key (PEM files)."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of a PKI made by :func:`make_pki`."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    servers: dict[str, CertKey] = field(default_factory=dict)
    clients: dict[str, CertKey] = field(default_factory=dict)
    tls_crypt_key: Path | None = None


class PkiError(RuntimeError):
    """An openssl/openvpn command failed; the message carries its stderr."""


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PkiError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _make_ca(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "ca.crt", directory / "ca.key"
    _run(
        [
            "openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec",
            "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-keyout", str(key), "-out", str(cert),
            "-days", str(DAYS), "-subj", "/CN=meshroute-lab-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        directory,
    )  # fmt: skip
    return cert, key


def _san_entry(host: str) -> str:
    """``IP:...`` for an address, ``DNS:...`` for a host name."""
    try:
        return f"IP:{ipaddress.ip_address(host)}"
    except ValueError:
        return f"DNS:{host}"


def _extensions_file(directory: Path, name: str, usage: str, san: Sequence[str]) -> Path:
    ext = directory / f"{name}.ext"
    alt = f"subjectAltName={','.join(_san_entry(h) for h in san)}\n" if san else ""
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        f"extendedKeyUsage={usage}\n" + alt
    )
    return ext


def _issue(
    directory: Path, ca_cert: Path, ca_key: Path, name: str, usage: str, san: Sequence[str] = ()
) -> CertKey:
    """Make a key and a CSR, then sign it; each identity has its own files."""
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = _extensions_file(directory, name, usage, san)
    _run(
        [
            "openssl", "req", "-new", "-nodes", "-newkey", "ec",
            "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={name}",
        ],
        directory,
    )  # fmt: skip
    _run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert),
            "-CAkey", str(ca_key), "-set_serial", f"0x{secrets.token_hex(16)}", "-out", str(cert),
            "-days", str(DAYS), "-extfile", str(ext),
        ],
        directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)
    return CertKey(name=name, cert=cert, key=key)


def make_tls_crypt_key(path: Path) -> Path:
    """A shared ``tls-crypt`` key made by ``openvpn --genkey`` (hides the TLS handshake)."""
    _run(["openvpn", "--genkey", "tls-crypt", str(path)], path.parent)
    path.chmod(0o600)
    return path


def make_pki(
    directory: Path | str,
    servers: list[str],
    clients: list[str],
    tls_crypt: bool = True,
    san: Mapping[str, Sequence[str]] | None = None,
) -> Pki:
    """Create a CA, one cert/key per server and per client (CN = the name) in directory.

    Names must be unique across servers and clients (they name the files). ``san``
    maps a server name to the host names and IP addresses its certificate is valid
    for (its ``subjectAltName``); servers not in it get none.
    """
    names = [*servers, *clients]
    if len(set(names)) != len(names):
        raise ValueError(f"server and client names must be unique: {names}")
    san = san or {}
    if set(san) - set(servers):
        raise ValueError(f"san names unknown servers: {sorted(set(san) - set(servers))}")
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(base)
    # A random serial per certificate (-set_serial): a shared ca.srl file would race
    # between the parallel signers.
    jobs = [(name, "serverAuth", tuple(san.get(name, ()))) for name in servers]
    jobs += [(name, "clientAuth", ()) for name in clients]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(jobs)))) as pool:
        issued = list(pool.map(lambda job: _issue(base, ca_cert, ca_key, *job), jobs))
    by_name = {item.name: item for item in issued}
    tls_key = make_tls_crypt_key(base / "tls-crypt.key") if tls_crypt else None
    return Pki(
        directory=base,
        ca_cert=ca_cert,
        ca_key=ca_key,
        servers={name: by_name[name] for name in servers},
        clients={name: by_name[name] for name in clients},
        tls_crypt_key=tls_key,
    )
