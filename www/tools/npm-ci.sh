#!/usr/bin/env bash
# npm ci in DIR unless its node_modules was installed from exactly this package-lock.json
# (a stamp of the lock's hash is kept in node_modules). Exits non-zero when npm ci fails.
# Usage: www/tools/npm-ci.sh DIR
set -euo pipefail
cd "$1"
lock="$(sha256sum package-lock.json | cut -c1-16)"
if [[ "$(cat node_modules/.lock-stamp 2>/dev/null)" != "$lock" ]]; then
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock" > node_modules/.lock-stamp
fi
