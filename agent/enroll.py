"""`room-agent enroll URL CODE`: fetch this device's settings and credentials from the
gateway with the one-time code `room-gateway device add` printed, instead of copying
files by hand (protocol/enrollment.py says what travels and why).

Over HTTPS only (http:// only to this host itself, for trying things out). With ``--pin``
the gateway's certificate must have that fingerprint, whoever signed it (a private CA, a
self-signed certificate): checked on the connection that carries the request, before
anything is sent. Without a pin, the system's CAs (or ``--ca-file``) must vouch for it.
The pinned certificate is saved beside the credentials (gateway-cert.pem) and agent.toml
names it as ``link.ca_file``: the agent's later connections trust exactly it (a
self-signed certificate, or a private CA's leaf: runtime/tls.py).

The files go where the service reads them: agent.toml (``--config``, mode 0644: no
secret in it) and the credential files (``--credentials-dir``, mode 0640, group
room-agent when that group exists, so the running agent can re-read them after a
rotation; else 0600). Paths agent.toml names are rewritten if the credentials go
elsewhere than the gateway meant. Existing files are replaced atomically. Then the
checks of `doctor` run (without the sound check) and their verdict is the exit status.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import ssl
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import ValidationError

from protocol.enrollment import (
    ENROLL_PATH,
    EnrollAnswer,
    EnrollmentError,
    EnrollRequest,
    certificate_fingerprint,
    lookup_id,
    normalize_code,
    open_files,
    public_key_text,
    unwrap,
)
from protocol.enrollment import DeviceFiles as Files
from runtime.cli import Fatal
from runtime.files import write_atomically

TIMEOUT_S = 15.0
CONFIG_FILE = "agent.toml"
PINNED_FILE = "gateway-cert.pem"  # the gateway's certificate, as pinned
SERVICE_GROUP = "room-agent"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def enroll(
    url: str,
    code: str,
    pin: str | None,
    ca_file: Path | None,
    config: Path,
    credentials_dir: Path,
) -> Files:
    """Fetch and write the files; raises Fatal with one line on any failure."""
    try:
        raw = normalize_code(code)
    except EnrollmentError as exc:
        raise Fatal(str(exc)) from None
    device_key = X25519PrivateKey.generate()
    request = EnrollRequest(
        lookup=lookup_id(raw), device_key=public_key_text(device_key.public_key())
    )
    status, body, pinned = _post(url, request.model_dump_json().encode(), pin, ca_file)
    if status != 200:
        raise Fatal(f"enroll: {url}: {_refusal(status, body)}")
    try:
        answer = EnrollAnswer.model_validate_json(body)
        files = open_files(unwrap(answer.sealed, device_key), raw)
    except (ValidationError, EnrollmentError):
        raise Fatal(
            f"enroll: {url} answered, but not with this code's files: is it the gateway that"
            " printed the code?"
        ) from None
    _write(files, config, credentials_dir, pinned)
    return files


def _post(
    url: str, body: bytes, pin: str | None, ca_file: Path | None
) -> tuple[int, bytes, bytes | None]:
    """The answer's status and body, and the pinned certificate (DER) when pinned."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise Fatal(f"enroll: {url}: not an https:// URL")
    if parts.scheme == "http" and host not in LOOPBACK:
        raise Fatal(
            f"enroll: {url}: plain http would show the exchange to anyone on the way; use the"
            " gateway's https:// URL, as `room-gateway device add` printed it"
        )
    path = parts.path.rstrip("/") + ENROLL_PATH
    pinned = None
    try:
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port or 443, timeout=TIMEOUT_S, context=_tls(pin, ca_file)
            )
            connection.connect()
            if pin is not None:
                pinned = _check_pin(connection, url, pin)
        else:
            connection = http.client.HTTPConnection(host, parts.port or 80, timeout=TIMEOUT_S)
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.read(1024 * 1024), pinned
    except ssl.SSLCertVerificationError as exc:
        raise Fatal(
            f"enroll: {url}: its certificate is not trusted ({exc.verify_message}): give"
            " --pin with the fingerprint `room-gateway device add` printed"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Fatal(f"enroll: {url}: {why}") from None


def _tls(pin: str | None, ca_file: Path | None) -> ssl.SSLContext:
    if pin is not None:  # the pin vouches for the certificate, not a CA
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def _check_pin(connection: http.client.HTTPConnection, url: str, pin: str) -> bytes:
    """The connection's certificate (DER), if it is the pinned one."""
    sock = connection.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    found = certificate_fingerprint(der) if der else "none"
    if found.lower() != pin.strip().lower():
        connection.close()
        raise Fatal(
            f"enroll: {url}: its certificate is {found}, not the pinned {pin}: this is not the"
            " gateway `room-gateway device add` named (or the URL goes through something"
            " else); nothing was sent"
        )
    assert der is not None
    return der


def _refusal(status: int, body: bytes) -> str:
    try:
        problem = json.loads(body)
        code = problem.get("code")
    except (ValueError, AttributeError):
        code = None
    if code == "enrollment_refused":
        return (
            "the code is unknown, used or expired: run `room-gateway device add ROOM --rotate`"
            " on the gateway for a new one"
        )
    if code == "too_many_attempts":
        return "too many wrong codes from here: wait a minute, then check the code"
    return f"HTTP {status}" + (f" {code}" if code else " (not the gateway's answer?)")


def _write(files: Files, config: Path, credentials_dir: Path, pinned: bytes | None) -> None:
    """The files; and the pinned certificate, which agent.toml then names as the link's
    ca_file: the certificate no CA vouches for is the one the technician pinned, so the
    agent's later connections to the gateway trust exactly it."""
    group = _service_group()
    try:
        credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if group is not None:  # the service's user may read its own, nobody else
            os.chown(credentials_dir, -1, group)
            credentials_dir.chmod(0o750)
        if not config.parent.is_dir():  # readable by the service: not the umask's 0700
            config.parent.mkdir(parents=True, exist_ok=True)
            config.parent.chmod(0o755)
        for name, text in files.files.items():
            if name == CONFIG_FILE:
                text = text.replace(files.install_dir, str(credentials_dir))
                if pinned is not None:
                    text = _with_link_ca(text, credentials_dir / PINNED_FILE)
                write_atomically(config, text.encode(), 0o644)
            else:
                write_atomically(
                    credentials_dir / name, text.encode(), 0o640 if group else 0o600, group=group
                )
        if pinned is not None:  # a certificate: public, like agent.toml
            pem = ssl.DER_cert_to_PEM_cert(pinned).encode()
            write_atomically(credentials_dir / PINNED_FILE, pem, 0o644)
    except OSError as exc:
        where = exc.filename or credentials_dir
        raise Fatal(f"enroll: {where}: {(exc.strerror or '').lower()} (run it with sudo)") from None


def _with_link_ca(config: str, ca_file: Path) -> str:
    """agent.toml with ``ca_file`` in its [agent.link] table (unless it names one)."""
    if tomllib.loads(config).get("agent", {}).get("link", {}).get("ca_file"):
        return config
    lines = config.splitlines()
    at = lines.index("[agent.link]") + 1 if "[agent.link]" in lines else None
    if at is None:
        lines += ["", "[agent.link]"]
        at = len(lines)
    lines.insert(at, f"ca_file = {json.dumps(str(ca_file))}  # the certificate pinned at enroll")
    return "\n".join(lines) + "\n"


def _service_group() -> int | None:
    """room-agent's group id, when it exists and we may give files to it."""
    try:
        gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None
    return gid if os.geteuid() == 0 or gid in os.getgroups() else None
