"""X-Blueprint-Signature against an independent HMAC implementation (openssl)."""

from __future__ import annotations

import hmac
import os
import subprocess

import pytest

from gateway.blueprint import signature

BODIES = [
    b'{"eventType":"transcript_ready","payload":{"sessionId":"s-1","transcriptUrl":"u"}}',
    b'{"eventType": "transcript_ready",  "payload": {}}\n',
    b"",
    os.urandom(4096),
    "caf\u00e9 \u2713".encode(),
]
SECRETS = ["sim-secret", "a much longer client secret with spaces / and symbols +=", "k"]


def openssl_hmac(body: bytes, secret: str) -> str:
    result = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret],
        input=body,
        capture_output=True,
        check=True,
    )
    # "SHA2-256(stdin)= <hex>" (or "(stdin)= <hex>" on older versions)
    return result.stdout.decode().strip().rsplit(" ", 1)[-1]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_sign_matches_openssl(body: bytes, secret: str) -> None:
    expected = openssl_hmac(body, secret)
    assert signature.sign(body, secret) == expected
    assert expected == expected.lower() and len(expected) == 64


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_verify_accepts_openssl_signatures(body: bytes) -> None:
    assert signature.verify(body, openssl_hmac(body, "sim-secret"), "sim-secret")


def test_verify_rejects_tampering_and_wrong_keys() -> None:
    body = BODIES[0]
    good = openssl_hmac(body, "sim-secret")
    assert not signature.verify(body + b" ", good, "sim-secret")
    assert not signature.verify(body, good, "other-secret")
    assert not signature.verify(body, openssl_hmac(body, "other-secret"), "sim-secret")
    assert not signature.verify(body, good[:-1], "sim-secret")
    assert not signature.verify(body, "sha256=" + good, "sim-secret")


@pytest.mark.parametrize("header", [None, "", "   ", "\u00e9" * 64, "zz" * 32])
def test_verify_rejects_missing_or_garbage_headers(header: str | None) -> None:
    assert signature.verify(BODIES[0], header, "sim-secret") is False


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    good = openssl_hmac(BODIES[0], "sim-secret")
    assert signature.verify(BODIES[0], good, "sim-secret")
    assert not signature.verify(BODIES[0], "0" * 64, "sim-secret")
    assert len(compared) == 2
