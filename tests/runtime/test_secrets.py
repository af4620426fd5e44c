from pathlib import Path

import pytest
from pydantic import SecretStr

from runtime.secrets import resolve_secret


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "installed"
    folder.mkdir()
    (folder / "ingest-token").write_text("from-install\n")
    monkeypatch.setenv("ROOM_AUDIO_CREDENTIALS", str(folder))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return folder


def resolve(given: str | None = None, file: Path | None = None) -> str | None:
    value = SecretStr(given) if given is not None else None
    found = resolve_secret(value, given is not None, file, "ingest-token", "ingest_token")
    return found.get_secret_value() if found is not None else None


def test_by_hand_the_installed_credential_is_read(installed):
    assert resolve() == "from-install"


def test_under_systemd_only_its_credentials_directory_counts(installed, tmp_path, monkeypatch):
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(systemd))
    assert resolve() is None
    (systemd / "ingest-token").write_text("from-systemd")
    assert resolve() == "from-systemd"


def test_value_and_file_win(installed, tmp_path):
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file")
    assert resolve(given="from-value") == "from-value"
    assert resolve(file=secret_file) == "from-file"
    with pytest.raises(ValueError, match="not both"):
        resolve(given="x", file=secret_file)


def test_nothing_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOM_AUDIO_CREDENTIALS", str(tmp_path / "absent"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert resolve() is None
