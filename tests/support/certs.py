"""A throwaway PKI for TLS tests, made with the openssl command (~0.1 s per certificate).

One CA; a server certificate for ``localhost`` and 127.0.0.1; client certificates whose
CN is a device id (mosquitto's ``use_identity_as_username`` makes it the ACL user).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
        _openssl(
            "req", "-x509", *_KEY, "-keyout", ca_key, "-out", ca_cert, "-days", DAYS,
            "-subj", "/CN=room-audio test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        pki = cls(directory, ca_cert, ca_key, directory / "server.crt", directory / "server.key")
        server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        pki._issue("localhost", pki.server_cert, pki.server_key, server_ext)
        return pki

    def client(self, common_name: str) -> ClientCert:
        """A client certificate with CN ``common_name``."""
        cert = self.directory / f"{common_name}.crt"
        key = self.directory / f"{common_name}.key"
        self._issue(common_name, cert, key, "extendedKeyUsage=clientAuth\n")
        return ClientCert(cert, key)

    def _issue(self, common_name: str, cert: Path, key: Path, extensions: str) -> None:
        csr = cert.with_suffix(".csr")
        ext = cert.with_suffix(".ext")
        ext.write_text(extensions)
        _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", cert, "-days", DAYS, "-extfile", ext,
        )  # fmt: skip
        key.chmod(0o600)


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
