#!/usr/bin/env bash
# The base image for the container smoke test (tests/test_container.py runs deploy/smoke.sh).
#
# CI has no container registry, only Debian's mirror. So when the Dockerfile's default base
# (ARG PYTHON_IMAGE) is not in podman's store yet, build a Debian bookworm root filesystem
# with python3 + venv from the mirror apt already uses, import it and tag it with that very
# name: the Dockerfile builds unchanged. Kept between runs on the same machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
if [ -z "$base" ]; then
  echo "container-base: no 'ARG PYTHON_IMAGE=' default in Dockerfile" >&2
  exit 1
fi
if podman image exists "$base"; then
  echo "container-base: $base already present"
  exit 0
fi

# The Debian mirror apt uses for bookworm (deb822 stanzas first, then the one-line format).
mirror=$(awk -v RS= '/Suites:[^\n]*[[:space:]]bookworm([[:space:]]|$)/ && !/security/ {
    for (i = 1; i < NF; i++) if ($i == "URIs:") { print $(i + 1); exit } }' \
  /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && !/security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/forwarder-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "container-base: debootstrap bookworm from $mirror"
started=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$base" >/dev/null
echo "container-base: imported $base in $((SECONDS - started)) s"
