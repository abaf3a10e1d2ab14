#!/usr/bin/env bash
# Regenerate the image's locked, hashed dependencies from pyproject.toml:
#   deploy/requirements.lock        [project].dependencies, for the runtime venv
#   deploy/requirements-build.lock  [build-system].requires, to build the wheel
# Pins already in the lock are kept unless pyproject.toml needs otherwise; pass --upgrade to
# move everything to the newest allowed versions. Needs uv (in the [test] extra).
# tests/test_deploy.py fails when pyproject.toml and these files disagree.
set -euo pipefail
cd "$(dirname "$0")/../.."
uv=${UV:-uv}
python=${PYTHON:-python3}
out=${LOCK_DIR:-deploy}  # tests write elsewhere to compare
# --native-tls: trust the system CA store (TLS-intercepting proxies add their CA there).
opts=(--quiet --native-tls --generate-hashes --python-version 3.11 --python-platform linux
  --custom-compile-command deploy/container/lock.sh "$@")

"$uv" pip compile pyproject.toml -o "$out/requirements.lock" "${opts[@]}"
"$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  | "$uv" pip compile - -o "$out/requirements-build.lock" "${opts[@]}"
