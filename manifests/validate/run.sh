#!/usr/bin/env bash
# Validate every document in manifests/ with pinned third-party schema tools (each overlay
# rendered with `kubectl kustomize` first, the dashboard with @grafana/schema, the Dockerfiles
# with hadolint), then run the negative cases in manifests/validate/negative/ and require each of
# them to fail for its named reason.
#
#   bash manifests/validate/run.sh
#
# Installs (and reuses): a Python venv at target/manifests-venv from requirements.txt (PyPI) and
# manifests/validate/node_modules from package-lock.json (npm ci). Re-installs only when those
# files change. Needs python3 >= 3.11, node >= 20 with npm, and kubectl (its built-in kustomize;
# checked with kubectl v1.32 / kustomize v5.5) or a standalone kustomize.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/manifests-venv"

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "manifests/validate: python3 >= 3.11 is required (envoy-data-plane)" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null \
  || { echo "manifests/validate: node and npm are required" >&2; exit 1; }
command -v kubectl >/dev/null || command -v kustomize >/dev/null \
  || { echo "manifests/validate: kubectl (kubectl kustomize) or kustomize is required" >&2; exit 1; }

# Python tools (PyPI), keyed on the requirements file's hash.
req_hash="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]]; then
  echo "manifests/validate: installing Python tools into ${venv#"$root"/}"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$req_hash" > "$venv/.requirements.sha256"
fi

# npm tools, keyed on the lock file's hash.
lock_hash="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$here/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_hash" ]]; then
  echo "manifests/validate: npm ci"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$here/node_modules/.lock.sha256"
fi

exec "$venv/bin/python" "$here/validate.py" "$root/manifests" --negative "$here/negative"
