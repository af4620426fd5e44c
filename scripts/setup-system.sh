#!/usr/bin/env bash
# Installs the Debian packages the project needs, and only those missing, so that
# `make test` and `make demo` work on a fresh machine and stay quiet on a prepared one.
set -euo pipefail

packages=(
    portaudio19-dev     # pyaudio builds against portaudio.h (no Linux wheel)
    mosquitto           # the MQTT broker the tests and the demo start privately
    mosquitto-clients   # mosquitto_sub / mosquitto_passwd
    espeak-ng           # synthetic speech with known spans for VAD tests and the demo
    sox                 # resampling of synthetic speech, and the benchmark baseline
    # recorded human voices for the VAD tests and benchmark (tests/support/voices.py)
    asterisk-core-sounds-en-wav asterisk-core-sounds-fr-wav asterisk-prompt-it-menardi-wav
    asterisk-prompt-es-co asterisk-prompt-fr-armelle ktuberling-data
    openssl             # test certificates
    systemd             # systemd-analyze verify / security for the unit tests
    procps              # /bin/kill, which mosquitto.service's ExecReload= names
    postgresql          # the gateway's store for several replicas; tests start their own
    haproxy             # the load balancer in front of gateway replicas (multi-replica tests)
    chromium            # the browser the /console and /docs tests drive (Playwright, headless)
    prometheus          # promtool: the tests check monitoring/alerts.yml with it
)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done
# Debian's own python3 needs python3-venv for `python3 -m venv`, and pyaudio compiles a C
# extension (gcc, Python.h); other pythons (pyenv, ...) bring their own venv and headers.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
headers=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$headers/Python.h" ] || missing+=(python3-dev)
command -v gcc >/dev/null || missing+=(gcc)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
