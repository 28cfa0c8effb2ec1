#!/usr/bin/env bash
# One-time, idempotent set-up: a virtualenv with the pinned packages, and the
# shared datasets linked into the git-ignored default data folders.
# Usage: bash scripts/setup.sh  (prints the python to use on its last line)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# The virtualenv lives outside the clone, keyed by requirements.txt, so a fresh
# clone (CI) reuses it instead of reinstalling torch every time.
key=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-12)
venv="${GAC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gender-age-classifier/venv-$key}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setup: creating $venv (first time: about 2 minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$venv/bin/python" -m pip install -q -r requirements.txt >&2
  "$venv/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt >&2
  touch "$venv/.complete"
fi

# Link the shared data (read-only, never committed) into the default folders.
shared="$(realpath -m "${GAC_SHARED_DATA:-$here/../shared/data}")"
for d in gender-data age-data utkface fairface-540; do
  if [ ! -e "$d" ] && [ -d "$shared/$d" ]; then
    ln -s "$shared/$d" "$d"
    echo "setup: linked $d -> $shared/$d" >&2
  fi
done
echo "$venv/bin/python"
