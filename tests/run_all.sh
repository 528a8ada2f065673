#!/usr/bin/env bash
# Every test, on a fresh Debian machine or an already set-up one:
#   1. installs what is missing (Mesa's lavapipe Vulkan driver, mlx + mlx-lm for the CPU,
#      the Qwen3 tokenizer files from npm),
#   2. builds the random-weight fixture models with mlx_lm.convert and records mlx-lm's answers
#      (plus a dense and an MoE model with fresh random seeds, checked live),
#   3. runs the Rust unit and integration tests against them, and the CLI end-to-end checks;
#   4. builds the npm package (./pkg-build.sh) and runs the browser tests in headless Chromium:
#      the package's download/cache logic, the chat app, and the real engine against the
#      native one (www/test/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export CARGO_TERM_COLOR=never
step() { echo; echo "=== $* ==="; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

step "system packages"
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
command -v npm >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }

step "python reference (mlx-lm on the CPU)"
if ! python3 -c "import mlx_lm, mlx.core, tokenizers, numpy" 2>/dev/null; then
    python3 -m pip install -q "mlx[cpu]==0.32.4" "mlx-lm==0.32.2" "tokenizers==0.23.3" numpy
fi

step "tokenizer files"
bash tests/fixtures/get_tokenizer.sh

step "fixture models (mlx_lm.convert) and mlx-lm reference outputs"
models=tests/fixtures/models
stamp="$(cat tests/fixtures/make_models.py tests/fixtures/tokenizer/tokenizer.json | sha256sum | cut -c1-16)"
if [[ "$(cat "$models/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    rm -rf "$models"
    python3 tests/fixtures/make_models.py --out "$models" --fresh
    echo "$stamp" > "$models/.stamp"
else
    # The deterministic set is cached (the stamp hashes make_models.py, so editing it rebuilds
    # everything); the fresh-seed models are made anew every run.
    python3 tests/fixtures/make_models.py --out "$models" --only fresh fresh_moe --fresh
fi
python3 tests/fixtures/tokenizer_ref.py --out "$models/tokenizer_ref.json"

step "build"
cargo build --release --locked

step "rust tests"
export WEBQWEN_REQUIRE_FIXTURES=1
cargo test --release --locked -- --test-threads=2

step "hub download end to end (mock hub)"
bash tests/hub_e2e.sh "$models/q4_g64"

step "npm package (wasm) and browser tests (headless Chromium)"
./pkg-build.sh
bash www/test/run.sh

echo
echo "all tests passed"
