"""A fresh Debian 12 root that follows the README as a new user would (issue 13).

Two roots made by debootstrap (minbase, with sudo and ca-certificates, as a fresh server
has them): the gateway host and the room device (each role installs into
/opt/room-audio/venv, so one host cannot hold both). In each, a checkout is cloned with
git, as the README says, and the README's code blocks run line by line, in order, as
written, in one bash with its aliases, as root. What a chroot lacks is stood in for:

- systemd: tests/field/systemctl.py as /usr/local/bin/systemctl runs the installed units
  (User=, LoadCredential=, StateDirectory=, drop-ins); apt's services are not started by
  their packages (policy-rc.d), as the README starts them itself;
- the person at ``sudoedit``: tests/field/edit_toml.py as $EDITOR sets the keys the README
  names (Blueprint, broker, the devices' addresses);
- the person answering apt's "Do you want to continue?": APT::Get::Assume-Yes;
- the network's TLS proxy CA, which this machine's package registries need, is copied in;
- the microphone: /etc/asound.conf makes ALSA's default device the file plugin reading a
  FIFO, which the host feeds with speech in real time.

Blueprint (the simulator) and the TLS-terminating proxy (HAProxy) the README asks for run
on the host, sharing the loopback network with both roots. The one line not run is
``rg device revoke room-101``: an example, which would revoke the room being installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MIRROR = os.environ.get("ROOM_FRESH_ROOT_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = "sudo,ca-certificates"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHECKOUT = "/root/room-audio"
MIC_FIFO = "/run/mic.fifo"
ASOUND_CONF = f"""pcm.!default {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{MIC_FIFO}"
    format "raw"
}}
"""


class FieldError(AssertionError):
    """A README step did not do what it says; the message names the step."""


def readme_blocks(heading: str) -> list[list[str]]:
    """The ```sh blocks under a README heading, as lines without their comments."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [[line for line in map(strip_comment, block.splitlines()) if line] for block in blocks]


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# ...`` (none of the README's quote a #)."""
    return re.sub(r"(^|\s)#.*$", "", line).rstrip()


@dataclass
class FreshRoot:
    """One debootstrapped root; ``run`` executes a script in it and keeps a transcript."""

    path: Path
    transcript: Path
    mounts: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, path: Path, base: Path | None = None) -> FreshRoot:
        if base is not None and base.is_dir():
            subprocess.run(["cp", "-a", f"{base}/.", str(path)], check=True)
        else:
            path.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                 str(path), MIRROR],
                check=True, capture_output=True,
            )  # fmt: skip
        root = cls(path, path.with_suffix(".transcript"))
        root._prepare()
        return root

    def _prepare(self) -> None:
        # Not the host's /dev: debootstrap made the root's own nodes, so nothing deleted
        # in the root (pytest removes old temporary directories) can reach the host's.
        for where, how in (
            ("proc", ["-t", "proc", "proc"]),
            ("sys", ["-t", "sysfs", "-o", "ro", "sysfs"]),
            ("dev/pts", ["-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"]),
            ("dev/shm", ["-t", "tmpfs", "tmpfs"]),
        ):
            target = self.path / where
            subprocess.run(["mount", *how, str(target)], check=True)
            self.mounts.append(target)
        shutil.copyfile("/etc/resolv.conf", self.path / "etc/resolv.conf")
        # As the Debian installer leaves them: sudo resolves this host's name.
        hostname = os.uname().nodename
        (self.path / "etc/hostname").write_text(f"{hostname}\n")
        hosts = self.path / "etc/hosts"
        if not hosts.exists():
            hosts.write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        with hosts.open("a") as lines:
            lines.write(f"127.0.1.1\t{hostname}\n")
        policy = self.path / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")  # packages do not start their services
        policy.chmod(0o755)
        (self.path / "etc/apt/apt.conf.d/90field").write_text('APT::Get::Assume-Yes "true";\n')
        for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copyfile(ca, self.path / "usr/local/share/ca-certificates" / ca.name)
        for script, name in (("systemctl.py", "systemctl"), ("edit_toml.py", "field-edit")):
            target = self.path / "usr/local/bin" / name
            shutil.copyfile(HERE / script, target)
            target.chmod(0o755)
        source = self.path / "mnt/source"
        source.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", "-o", "ro", str(ROOT), str(source)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(source)], check=True)
        self.mounts.append(source)
        self.run("update-ca-certificates >/dev/null && apt-get update -qq", "prepare")

    def run(self, script: str, what: str, env: dict[str, str] | None = None) -> str:
        """Run ``script`` (bash, as root, from /root) in the root; returns its output
        (stdout and stderr together, as a terminal shows them); raises if it fails."""
        variables = {
            "HOME": "/root",
            "PATH": PATH,
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            **(env or {}),
        }
        argv = ["chroot", str(self.path), "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in variables.items()),
                "/bin/bash", "-c", f"cd /root\n{script}"]  # fmt: skip
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with self.transcript.open("a") as transcript:
            transcript.write(f"\n===== {what} (exit {done.returncode})\n{done.stdout}")
        if done.returncode != 0:
            raise FieldError(
                f"{self.path.name}: {what} exited {done.returncode}:\n{done.stdout[-4000:]}"
            )
        return done.stdout

    def logs(self) -> dict[str, str]:
        """Every unit's output (the stand-in's /var/log/field) and the transcript."""
        found = {str(self.transcript): self.transcript.read_text()}
        for log in sorted((self.path / "var/log/field").glob("*.log")):
            found[str(log)] = log.read_text(errors="replace")
        return found

    def close(self) -> None:
        for proc in Path("/proc").glob("[0-9]*"):  # every process still in the root
            try:
                if os.readlink(proc / "root") == str(self.path):
                    os.kill(int(proc.name), 9)
            except OSError:
                continue
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)
        self.mounts.clear()


def readme_script(lines: list[str], replace: dict[str, str] | None = None) -> str:
    """Lines as one bash script that echoes each before running it (aliases on)."""
    out = ["set -euo pipefail", "shopt -s expand_aliases", f"cd {CHECKOUT}"]
    for line in lines:
        for prefix, instead in (replace or {}).items():
            if line.startswith(prefix):
                line = instead
        if not line:
            continue
        out += [f"echo {shell_quote('+ ' + line)}", line]
    return "\n".join(out) + "\n"


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def checkout_script() -> str:
    """A fresh Debian needs git and make first; then a checkout (of this commit)."""
    return (
        f"set -euo pipefail\nsudo apt-get install git make\ngit clone -q /mnt/source {CHECKOUT}\n"
    )


def edits_env(edits: dict[str, dict[str, object]]) -> dict[str, str]:
    """What sudoedit needs to be the technician's editor."""
    editor = "/usr/local/bin/field-edit"
    return {"EDITOR": editor, "SUDO_EDITOR": editor, "FIELD_EDITS": json.dumps(edits)}


def tracebacks(logs: dict[str, str]) -> list[str]:
    return [where for where, text in logs.items() if "Traceback" in text]
