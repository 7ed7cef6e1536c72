#!/usr/bin/env bash
# Creates the Python environment of the example client (clients/python) at
# target/python and installs clients/python/requirements.txt into it.
#
# Idempotent: when the environment already holds exactly these requirements (a stamp
# file records their checksum), it does nothing. Needs python3 (3.9 or newer) with the
# venv module, and the package index reachable on the first run.
#
#   bash scripts/python-env.sh          # then: target/python/bin/python ...
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python
requirements=clients/python/requirements.txt
stamp=$venv/.requirements.sha256

wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "python-env: $venv is complete"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null ||
  { echo "python-env: $python not found (set PYTHON to a Python 3.9+ interpreter)" >&2; exit 1; }

echo "python-env: creating $venv from $requirements"
rm -f "$stamp"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# The stamp is written last: an interrupted install is redone on the next run.
echo "$wanted" > "$stamp"
echo "python-env: $venv is ready"
