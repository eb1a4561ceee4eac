#!/usr/bin/env bash
#! build-images.sh: build static tandem and legacy-app, then the FROM-scratch image.
#
# Purpose: one command for the README, the Compose tests and CI. Invariant: the Docker build
# context is a scratch directory holding only the Dockerfile and the two static binaries, so
# the build sends a few MB, never the repository or target/. Nothing is pulled from a registry.
#
# Usage: compose/build-images.sh [IMAGE_TAG]     (default tag: tandem-legacy-app:dev)
# Env:   SKIP_CARGO=1 reuses binaries already built by the same cargo command.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-tandem-legacy-app:dev}"
target=x86_64-unknown-linux-gnu
out="${CARGO_TARGET_DIR:-$root/target}/$target/release"

if [ "${SKIP_CARGO:-0}" != 1 ]; then
    # crt-static on the gnu target gives static binaries that run in an empty image, and
    # static-pie ones with the default relocation model: the image's tandem keeps address-space
    # randomisation (it self-relocates ~31,000 entries at start, ~0.5 ms; see
    # supervisor/build.rs and BENCHMARKS.md). With --target, RUSTFLAGS reaches only target
    # code, not build scripts or proc macros.
    (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target "$target" -p tandem -p legacy-app)
fi

for bin in tandem legacy-app; do
    if ! [ -x "$out/$bin" ]; then
        echo "build-images.sh: $out/$bin is missing" >&2
        exit 1
    fi
    # A dynamically linked binary would fail in the scratch image with a baffling
    # "no such file or directory" (its loader is absent): refuse it here instead.
    if command -v file >/dev/null && file "$out/$bin" | grep -q 'dynamically linked'; then
        echo "build-images.sh: $out/$bin is dynamically linked; build with crt-static" >&2
        exit 1
    fi
done

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$root/compose/Dockerfile" "$out/tandem" "$out/legacy-app" "$context/"
# An empty directory that becomes /var/log/app, owned by the image's user, so a named volume
# mounted there (extra-service mode) is writable by the app.
mkdir "$context/logdir"
docker build --tag "$tag" "$context"
echo "built $tag"
