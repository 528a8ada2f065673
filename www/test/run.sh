#!/usr/bin/env bash
# Browser tests of www/ in headless Chromium: the npm package's JS side with a mock wasm
# module, the chat app, and the real package from ./pkg-build.sh on the fixture models against
# the native binary: through the test harness (engine.test.mjs), the chat app (app-engine.test.mjs)
# and a web app built with Vite from the packed tarball (vite.test.mjs). Installs what is
# missing: the pinned npm dependencies (npm ci) and, on Debian as root, the chromium package.
# Screenshots go to $OUT_DIR (default /tmp/webqwen-www-test).
set -euo pipefail
cd "$(dirname "$0")"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
    echo "installing chromium (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v npm >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
bash ../tools/npm-ci.sh .

export CHROMIUM
# One file at a time: each starts its own browser and servers.
node --test --test-concurrency=1 --test-reporter=spec \
    unit.test.mjs package.test.mjs app.test.mjs engine.test.mjs app-engine.test.mjs vite.test.mjs
