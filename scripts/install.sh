#!/usr/bin/env bash
# Installs the room agent or the gateway as a hardened systemd service.
#
#   sudo scripts/install.sh agent      # a room device
#   sudo scripts/install.sh gateway    # the partner's gateway host
#
# Creates the service user, /opt/room-audio/venv with the program (its dependencies from
# requirements/<role>.lock, pinned with hashes), /etc/room-audio/<x>.toml
# from config.example.toml (never overwritten), the credentials directory, the unit, and
# /usr/local/bin/room-<role> (a link into the venv, on sudo's PATH).
# The unit is enabled only once its credential files exist; until then the script says
# which files to create. Safe to run again (an upgrade reinstalls the program).
#
# DESTDIR=DIR installs into DIR instead of / without creating users, owners or calling
# systemctl (for packaging, and for the tests): the files are exactly those of a real
# install (scripts say #!/opt/room-audio/venv/bin/python, not DIR's path), so DIR can be
# copied to /. SKIP_VENV=1 leaves the virtualenv out.
#
# The program runs on Debian's own python3 (/usr/bin/python3, or PYTHON=...): the
# hardened unit cannot read a python under /root or /home (ProtectHome=yes), as a pyenv
# one would be.
set -euo pipefail

role=${1:-}
case "$role" in
    agent | gateway) ;;
    *) echo "usage: $0 agent|gateway" >&2; exit 2 ;;
esac

src=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
destdir=${destdir%/}
python=${PYTHON:-/usr/bin/python3}
prefix=/opt/room-audio
etc=/etc/room-audio
user=room-$role
unit=room-$role.service
config=$etc/$role.toml
credentials=$etc/credentials
state=/var/lib/$user
if [ "$role" = agent ]; then
    secrets=(ingest-token mqtt-password)
    extra=agent
    # pyaudio has no wheel for Linux: it is built against PortAudio's headers.
    debian_packages=(python3-venv libportaudio2 portaudio19-dev gcc python3-dev)
else
    secrets=(blueprint-api-key blueprint-client-secret)
    extra=gateway
    debian_packages=(python3-venv)
fi

say() { echo "install: $*"; }
fail() { echo "install: $*" >&2; exit 2; }

# What a real install needs from Debian, and only what is missing.
system_packages() {
    local missing=() pkg
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The virtualenv, built in place under DESTDIR, then made to name its final location:
# console scripts' shebangs, activate scripts and bytecode paths say $prefix, not DESTDIR.
build_venv() {
    local venv="$destdir$prefix/venv"
    case "$python" in
        /root/* | /home/*) fail "$python is under /root or /home, which the service cannot read (ProtectHome=yes): use Debian's /usr/bin/python3 (PYTHON=...)" ;;
    esac
    [ -x "$python" ] || fail "$python not found: apt-get install python3 python3-venv (or PYTHON=...)"
    "$python" -c 'import ensurepip' 2>/dev/null || fail "$python cannot make a virtualenv: apt-get install python3-venv"
    say "installing the program into $prefix/venv (with $python)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --no-compile --upgrade pip
    # The dependencies exactly as tested: requirements/$extra.lock pins every one, with
    # hashes (`make lock` writes it from pyproject.toml); then the program itself, alone.
    "$venv/bin/pip" install --quiet --no-compile --require-hashes -r "$src/requirements/$extra.lock"
    "$venv/bin/pip" install --quiet --no-compile --no-deps "$src"
    if [ -n "$destdir" ]; then
        grep -rlIF -- "$destdir$prefix" "$venv/bin" "$venv/pyvenv.cfg" |
            while read -r file; do sed -i "s|$destdir$prefix|$prefix|g" "$file"; done
    fi
    # Bytecode recorded as where the sources will be (not where they are staged).
    "$venv/bin/python" -m compileall -f -q -j 0 ${destdir:+-s "$destdir" -p /} "$venv/lib" >/dev/null
}

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (or with DESTDIR=... for a staged install)" >&2
    exit 2
fi

if [ -z "$destdir" ]; then
    system_packages
    if ! id "$user" >/dev/null 2>&1; then
        say "creating system user $user"
        useradd --system --home-dir "/var/lib/$user" --no-create-home \
            --shell /usr/sbin/nologin --user-group "$user"
    fi
    if [ "$role" = agent ]; then
        usermod --append --groups audio "$user"
    fi
fi

install -d -m 0755 "$destdir$prefix" "$destdir$etc" "$destdir/etc/systemd/system"
install -d -m 0700 "$destdir$credentials"
# The state directory: the admin commands the README runs next (keygen, broker-config,
# device add, ...) write there as $user, before the unit's StateDirectory= ever ran.
install -d -m 0700 "$destdir$state"
[ -z "$destdir" ] && chown "$user:$user" "$state"

if [ -z "${SKIP_VENV:-}" ]; then
    build_venv
fi
install -m 0644 "$src/README.md" "$destdir$prefix/README.md"
# On sudo's PATH: `device add` prints `sudo room-agent enroll ...` for the technician to type.
install -d -m 0755 "$destdir/usr/local/bin"
ln -sfn "$prefix/venv/bin/room-$role" "$destdir/usr/local/bin/room-$role"

if [ -e "$destdir$config" ]; then
    say "keeping the existing $config"
else
    say "writing $config from config.example.toml (edit it, then run: room-$role config validate)"
    # The file's opening comments, then only this role's tables.
    awk -v role="$role" '
        /^\[/ { table = $0; gsub(/^\[|\]$/, "", table); keep = (table == role || index(table, role ".") == 1); seen = 1 }
        !seen || keep { print }
    ' "$src/config.example.toml" |
        # The service (StateDirectory=) and admin commands run as $user must agree.
        sed "s|^# state_dir = .*|state_dir = \"$state\"|" >"$destdir$config.new"
    chmod 0640 "$destdir$config.new"
    mv "$destdir$config.new" "$destdir$config"
    [ -z "$destdir" ] && chgrp "$user" "$config"
fi

install -m 0644 "$src/systemd/$unit" "$destdir/etc/systemd/system/$unit"
if [ "$role" = gateway ]; then
    # Debian's mosquitto, when used, runs from the files `room-gateway broker-config` writes.
    install -D -m 0644 "$src/systemd/mosquitto-room-audio.conf" \
        "$destdir/etc/systemd/system/mosquitto.service.d/room-audio.conf"
fi
[ -n "$destdir" ] && { say "staged in $destdir"; exit 0; }

missing=()
for name in "${secrets[@]}"; do
    [ -s "$credentials/$name" ] || missing+=("$credentials/$name")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "not starting $unit yet: put each secret in its file (mode 0600, owner root):"
    printf '  %s\n' "${missing[@]}"
    if [ "$role" = agent ]; then
        say "they come from 'room-gateway device add ROOM_ID' on the gateway (room-agent enroll writes them)"
    fi
fi
if [ ! -d /run/systemd/system ]; then
    # A container or chroot: the files are in place; the unit is for systemd to start.
    say "systemd is not running here: $unit installed, not enabled (then: systemctl enable --now $unit)"
    exit 0
fi
systemctl daemon-reload
if [ ${#missing[@]} -gt 0 ]; then
    say "then: systemctl enable --now $unit"
    exit 0
fi
systemctl enable --now "$unit"
say "$unit is running: systemctl status $unit; journalctl -u $unit"
