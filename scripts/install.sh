#!/usr/bin/env bash
# Installs the room agent or the gateway as a hardened systemd service.
#
#   sudo scripts/install.sh agent      # a room device
#   sudo scripts/install.sh gateway    # the partner's gateway host
#
# Creates the service user, /opt/room-audio/venv with the program, /etc/room-audio/<x>.toml
# from config.example.toml (never overwritten), the credentials directory, and the unit.
# The unit is enabled only once its credential files exist; until then the script says
# which files to create. Safe to run again (an upgrade reinstalls the program).
#
# DESTDIR=DIR installs into DIR instead of / without creating users or calling systemctl
# (for packaging, and for the tests). SKIP_VENV=1 leaves the virtualenv out.
set -euo pipefail

role=${1:-}
case "$role" in
    agent | gateway) ;;
    *) echo "usage: $0 agent|gateway" >&2; exit 2 ;;
esac

src=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
prefix=/opt/room-audio
etc=/etc/room-audio
user=room-$role
unit=room-$role.service
config=$etc/$role.toml
credentials=$etc/credentials
if [ "$role" = agent ]; then
    secrets=(ingest-token mqtt-password)
    extra=agent
else
    secrets=(blueprint-api-key blueprint-client-secret)
    extra=gateway
fi

say() { echo "install: $*"; }

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (or with DESTDIR=... for a staged install)" >&2
    exit 2
fi

if [ -z "$destdir" ]; then
    if [ "$role" = agent ]; then
        "$src/scripts/setup-system.sh"  # portaudio19-dev: pyaudio builds against it
    fi
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

if [ -z "${SKIP_VENV:-}" ]; then
    say "installing the program into $prefix/venv"
    python3 -m venv "$destdir$prefix/venv"
    "$destdir$prefix/venv/bin/pip" install --quiet --upgrade pip
    "$destdir$prefix/venv/bin/pip" install --quiet "$src[$extra]"
fi
install -m 0644 "$src/README.md" "$destdir$prefix/README.md"

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
        sed "s|^# state_dir = .*|state_dir = \"/var/lib/$user\"|" >"$destdir$config.new"
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

systemctl daemon-reload
missing=()
for name in "${secrets[@]}"; do
    [ -s "$credentials/$name" ] || missing+=("$credentials/$name")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "not starting $unit yet: put each secret in its file (mode 0600, owner root):"
    printf '  %s\n' "${missing[@]}"
    if [ "$role" = agent ]; then
        say "they come from 'room-gateway device add ROOM_ID' on the gateway"
    fi
    say "then: systemctl enable --now $unit"
    exit 0
fi
systemctl enable --now "$unit"
say "$unit is running: systemctl status $unit; journalctl -u $unit"
