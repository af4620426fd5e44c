"""Enrollment as a technician does it: `room-gateway device add` on a real gateway prints a
one-time code; `room-agent enroll URL CODE` on the device fetches its settings and
credentials, writes them with the right modes, and runs doctor's checks.

A code works once, expires, is rate-limited against guessing, and is never stored or
logged; a pinned certificate that is not the gateway's stops enrollment before anything
is sent.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
import tomllib

import httpx
import numpy as np
import pytest

from gateway.store import Database
from protocol.enrollment import (
    ENROLL_PATH,
    EnrollRequest,
    certificate_fingerprint,
    lookup_id,
    normalize_code,
    public_key_text,
)
from protocol.envelope import generate_private_key
from tests.agent.device_setup import ROOM_AGENT
from tests.gateway.conftest import GatewayProcess
from tests.support.alsa import write_asound_conf, write_raw
from tests.support.certs import Pki
from tests.support.haproxy import HaProxy
from tests.support.ingest_server import IngestServer

pytestmark = pytest.mark.timeout(120)
ROOM = "room-4"
PIN = re.compile(r" --pin (sha256:[0-9a-f]{64})$", re.M)
CODE = re.compile(r"^enrollment code: ([0-9A-Z]{4}(?:-[0-9A-Z]{4}){3}) \(once, until .*\)$", re.M)


@pytest.fixture
def gateway(tmp_path):
    gateway = GatewayProcess(tmp_path / "gateway", "http://127.0.0.1:9", {})
    gateway.env["ROOM_GATEWAY_DEVICES__GATEWAY_URL"] = gateway.url
    gateway.cli("keygen")  # before serve, as the README has it
    gateway.start()
    yield gateway
    gateway.stop()


def device_add(gateway: GatewayProcess, *extra: str) -> tuple[str, subprocess.CompletedProcess]:
    done = gateway.cli("device", "add", ROOM, *extra)
    found = CODE.search(done.stderr)
    assert found is not None, done.stderr
    assert f"on the device:   sudo room-agent enroll {gateway.url} {found[1]}" in done.stderr
    return found[1], done


def enroll(
    tmp_path, url: str, code: str, *extra: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(env_extra or {})
    env["ROOM_AGENT_STATE_DIR"] = str(tmp_path / "device-state")
    return subprocess.run(
        [
            ROOM_AGENT,
            "--config",
            str(tmp_path / "device" / "agent.toml"),
            "enroll",
            url,
            code,
            "--credentials-dir",
            str(tmp_path / "device" / "credentials"),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_device_enrolls_once_with_the_code(tmp_path, gateway):
    code, added = device_add(gateway)
    issued = tmp_path / "gateway" / "devices" / ROOM  # what device add wrote on the gateway
    done = enroll(tmp_path, gateway.url, code.lower().replace("-", " "))  # as typed
    assert "Traceback" not in done.stderr + done.stdout
    assert f"device {ROOM} enrolled" in done.stderr, done.stderr
    device = tmp_path / "device"
    config = (device / "agent.toml").read_text()
    meant = (issued / "agent.toml").read_text()  # paths rewritten to where the files went
    assert config == meant.replace("/etc/room-audio/credentials", str(device / "credentials"))
    assert stat.S_IMODE((device / "agent.toml").stat().st_mode) == 0o644
    for name in ("ingest-token", "mqtt-password"):
        path = device / "credentials" / name
        assert path.read_text() == (issued / name).read_text()
        assert stat.S_IMODE(path.stat().st_mode) in (0o600, 0o640), "never world-readable"
    # doctor's checks ran against the real gateway with the fetched credentials.
    assert re.search(r"^ok +gateway +.*token accepted", done.stdout, re.M), done.stdout
    assert re.search(r"^ok +sealing key +the gateway's", done.stdout, re.M), done.stdout

    again = enroll(tmp_path / "again", gateway.url, code)
    assert again.returncode == 2
    assert again.stderr == (
        f"room-agent: enroll: {gateway.url}: the code is unknown, used or expired: run"
        " `room-gateway device add ROOM --rotate` on the gateway for a new one\n"
    )
    assert not (tmp_path / "again" / "device" / "agent.toml").exists()
    # The code is nowhere at the gateway: not in its store, not in its log.
    raw = normalize_code(code)
    for path in (tmp_path / "gateway").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert raw.encode() not in data and code.encode() not in data, path
    rows = gateway.query("SELECT sealed_bundle, used_at FROM enrollments")
    assert len(rows) == 1 and rows[0][0] is None and rows[0][1] is not None, "used up"
    assert added.stdout == meant, "device add still prints agent.toml"


def test_enroll_succeeds_before_the_service_was_ever_started(tmp_path, gateway):
    """The README's order: enroll, then start the service. An agent that never ran is the
    next step, not a problem: with a microphone there and the gateway reachable, enroll
    ends with exit status 0 and says what to do next."""
    microphone = write_asound_conf(
        tmp_path / "asound.conf", write_raw(tmp_path / "mic.raw", np.zeros(16_000, np.int16))
    )
    code, _ = device_add(gateway)
    done = enroll(tmp_path, gateway.url, code, env_extra=microphone)
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^skipped +agent +not started yet", done.stdout, re.M), done.stdout
    assert "next: sudo systemctl enable --now room-agent" in done.stderr


def test_an_expired_code_and_a_replaced_one_are_refused(tmp_path, gateway):
    first, _ = device_add(gateway)
    second, _ = device_add(gateway, "--rotate")  # a new code replaces the unused one
    assert enroll(tmp_path / "a", gateway.url, first).returncode == 2
    db = Database.open(gateway.store_location, migrate=False)
    try:
        db.call(lambda conn: conn.execute("UPDATE enrollments SET expires_at = 0"))
    finally:
        db.close()
    done = enroll(tmp_path / "b", gateway.url, second)
    assert done.returncode == 2 and "unknown, used or expired" in done.stderr


def test_guessing_is_rate_limited(tmp_path, gateway):
    code, _ = device_add(gateway)
    key = public_key_text(generate_private_key().public_key())
    for n in range(10):
        wrong = EnrollRequest(lookup=lookup_id(f"{n:016d}"), device_key=key)
        answer = httpx.post(f"{gateway.url}{ENROLL_PATH}", json=wrong.model_dump())
        assert answer.status_code == 404 and answer.json()["code"] == "enrollment_refused"
    answer = httpx.post(f"{gateway.url}{ENROLL_PATH}", json=wrong.model_dump())
    assert answer.status_code == 429 and answer.json()["code"] == "too_many_attempts"
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    done = enroll(tmp_path, gateway.url, code)  # even the right code waits now
    assert done.returncode == 2 and "too many wrong codes" in done.stderr
    assert "Traceback" not in gateway.log()


def test_a_certificate_that_is_not_the_pinned_one_stops_enrollment(tmp_path):
    pki = Pki.create(tmp_path / "pki")
    with IngestServer(generate_private_key(), {}, tls=pki) as server:
        der = ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
        right = certificate_fingerprint(der)
        wrong = "sha256:" + "0" * 64
        code = "ABCD-EFGH-JKMN-PQRS"
        done = enroll(tmp_path, server.url, code, "--pin", wrong)
        assert done.returncode == 2
        assert done.stderr == (
            f"room-agent: enroll: {server.url}: its certificate is {right}, not the pinned"
            f" {wrong}: this is not the gateway `room-gateway device add` named (or the URL"
            " goes through something else); nothing was sent\n"
        )
        assert server.requests() == []
        # Unpinned, a certificate no CA vouches for is refused too.
        done = enroll(tmp_path, server.url, code)
        assert done.returncode == 2 and "its certificate is not trusted" in done.stderr
        # The right pin gets through to the server (which is no gateway: 404).
        done = enroll(tmp_path, server.url, code, "--pin", right)
        assert done.returncode == 2 and "HTTP 404" in done.stderr


@pytest.mark.parametrize("issuer", ["self-signed", "private CA"])
def test_the_pinned_certificate_is_what_the_device_trusts_afterwards(tmp_path, issuer):
    """Behind a TLS proxy whose certificate no system CA vouches for, the pin gets the
    device enrolled, and then its own connections to the gateway verify that certificate
    (saved as link.ca_file): doctor's gateway check passes, during enroll and after."""
    if issuer == "self-signed":
        cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
             "/CN=gateway.test", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    else:
        pki = Pki.create(tmp_path / "pki")  # a leaf of a CA the device never sees
        cert, key = pki.server_cert, pki.server_key
    pem = tmp_path / "proxy.pem"
    pem.write_text(cert.read_text() + key.read_text())
    gateway = GatewayProcess(tmp_path / "gateway", "http://127.0.0.1:9", {})
    proxy = HaProxy(tmp_path / "haproxy", {"gateway": gateway.port}, tls_pem=pem, checks=False)
    gateway.env["ROOM_GATEWAY_DEVICES__GATEWAY_URL"] = proxy.url
    gateway.cli("keygen")
    gateway.start()
    proxy.start()
    try:
        added = gateway.cli("device", "add", ROOM)
        code, pin = CODE.search(added.stderr), PIN.search(added.stderr)
        assert code is not None and pin is not None, added.stderr
        done = enroll(tmp_path, proxy.url, code[1], "--pin", pin[1])
        doctor = subprocess.run(
            [ROOM_AGENT, "--config", str(tmp_path / "device" / "agent.toml"), "doctor",
             "--no-check"],
            env={**os.environ, "ROOM_AGENT_STATE_DIR": str(tmp_path / "device-state"),
                 "CREDENTIALS_DIRECTORY": str(tmp_path / "device" / "credentials")},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proxy.stop()
        gateway.stop()
    assert "Traceback" not in done.stdout + done.stderr + doctor.stdout + doctor.stderr
    assert f"device {ROOM} enrolled" in done.stderr, done.stderr
    for output in (done.stdout, doctor.stdout):
        assert re.search(r"^ok +gateway +.*token accepted", output, re.M), output
    saved = tmp_path / "device" / "credentials" / "gateway-cert.pem"
    assert ssl.PEM_cert_to_DER_cert(saved.read_text()) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    config = (tmp_path / "device" / "agent.toml").read_text()
    assert tomllib.loads(config)["agent"]["link"]["ca_file"] == str(saved)
