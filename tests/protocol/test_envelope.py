import hashlib

import pytest

from protocol.envelope import (
    ChunkHeader,
    EnvelopeError,
    MalformedEnvelope,
    TamperedEnvelope,
    TruncatedEnvelope,
    UnknownVersion,
    WrongKey,
    generate_private_key,
    open_chunk,
    private_key_from_pem,
    private_key_to_pem,
    public_key_from_text,
    public_key_to_text,
    read_header,
    seal_chunk,
)

AUDIO = b"fLaC" + bytes(range(256)) * 40


def header(**overrides) -> ChunkHeader:
    fields = dict(
        device_id="room-101",
        session_id="s-1",
        seq=3,
        codec="flac",
        start_s=12.5,
        duration_s=4.2,
        sha256=hashlib.sha256(AUDIO).hexdigest(),
    )
    return ChunkHeader(**(fields | overrides))


@pytest.fixture(scope="module")
def key():
    return generate_private_key()


@pytest.fixture(scope="module")
def sealed(key):
    return seal_chunk(header(), AUDIO, key.public_key())


def test_round_trip(key, sealed):
    opened = open_chunk(sealed, key)
    assert opened.audio == AUDIO
    assert opened.header == header()
    assert AUDIO not in sealed, "plaintext must not appear in the sealed bytes"


def test_header_readable_without_key(sealed):
    assert read_header(sealed).seq == 3


def test_each_seal_is_fresh(key):
    assert seal_chunk(header(), AUDIO, key.public_key()) != seal_chunk(
        header(), AUDIO, key.public_key()
    )


@pytest.mark.parametrize("cut", [0, 5, 20, 100, -1])
def test_truncated(key, sealed, cut):
    with pytest.raises(TruncatedEnvelope):
        open_chunk(sealed[:cut], key)


def test_trailing_bytes(key, sealed):
    with pytest.raises(MalformedEnvelope):
        open_chunk(sealed + b"\0", key)


def test_unknown_version(key, sealed):
    with pytest.raises(UnknownVersion, match="version 9"):
        open_chunk(sealed[:4] + b"\x09" + sealed[5:], key)


def test_bad_magic(key, sealed):
    with pytest.raises(MalformedEnvelope):
        open_chunk(b"XXXX" + sealed[4:], key)


def test_garbage(key):
    with pytest.raises(EnvelopeError):
        open_chunk(b"\x00" * 500, key)


@pytest.mark.parametrize("where", ["header", "epk", "ciphertext", "tag"])
def test_tampered(key, sealed, where):
    raw = bytearray(sealed)
    header_at = 19
    offsets = {
        "header": header_at + 30,
        "epk": len(raw) - len(AUDIO) - 16 - 40,
        "ciphertext": len(raw) - 100,
        "tag": len(raw) - 1,
    }
    raw[offsets[where]] ^= 0x01
    with pytest.raises(EnvelopeError):
        open_chunk(bytes(raw), key)


def test_header_swap_is_tampering(key, sealed):
    """Changing the authenticated header (here, the seq) must fail even if it parses."""
    forged = sealed.replace(b'"seq":3', b'"seq":4')
    assert read_header(forged).seq == 4
    with pytest.raises(TamperedEnvelope):
        open_chunk(forged, key)


def test_wrong_key(sealed):
    with pytest.raises(WrongKey):
        open_chunk(sealed, generate_private_key())


def test_digest_must_match():
    with pytest.raises(ValueError, match="sha256"):
        seal_chunk(header(sha256="0" * 64), AUDIO, generate_private_key().public_key())


def test_key_text_forms(key):
    assert public_key_to_text(public_key_from_text(public_key_to_text(key.public_key()))) == (
        public_key_to_text(key.public_key())
    )
    assert private_key_from_pem(private_key_to_pem(key)).public_key() == key.public_key()
    with pytest.raises(EnvelopeError, match="base64"):
        public_key_from_text("not base64 !!")
    with pytest.raises(EnvelopeError, match="32 bytes"):
        public_key_from_text("AAAA")
