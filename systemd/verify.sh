#!/usr/bin/env bash
#! verify.sh: run `systemd-analyze verify` on tandem's unit files.
#
# Purpose: catch unit-file mistakes (unknown keys, bad values, typos in sections) in CI, on a
# machine where systemd is not PID 1. Invariant: the units are verified exactly as shipped,
# except that /usr/local/bin/ is rewritten to a scratch bin directory, because verify insists
# that every ExecStart binary exists and is executable, and CI must not write into
# /usr/local/bin. Those stand-ins are the real tandem and legacy-app when built (set
# TANDEM_BIN / LEGACY_APP_BIN), otherwise /bin/true.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v systemd-analyze >/dev/null; then
    echo "verify.sh: systemd-analyze not found (Debian: apt-get install systemd)" >&2
    exit 2
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/bin" "$scratch/units"
install -m 0755 "${TANDEM_BIN:-/bin/true}" "$scratch/bin/tandem"
install -m 0755 "${LEGACY_APP_BIN:-/bin/true}" "$scratch/bin/legacy-app"

status=0
for unit in "$here"/*.service; do
    name="$(basename "$unit")"
    sed "s#/usr/local/bin/#$scratch/bin/#g" "$unit" >"$scratch/units/$name"
    # verify prints problems on stderr but exits 0 for some of them: fail on any output too.
    if ! out="$(cd "$scratch/units" && systemd-analyze verify "./$name" 2>&1)" || [ -n "$out" ]; then
        echo "FAIL $name" >&2
        printf '%s\n' "$out" | sed "s#$scratch/bin/#/usr/local/bin/#g" >&2
        status=1
    else
        echo "ok   $name"
    fi
done
exit "$status"
