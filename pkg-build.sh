#!/usr/bin/env bash
# Builds the npm package `webqwen` into pkg/ from a fresh machine:
#   1. the wasm32 target (rustup) when missing;
#   2. the library for wasm32-unknown-unknown in release;
#   3. wasm-bindgen at exactly the version Cargo.lock pins (wasm-bindgen-cli installed when missing);
#   4. wasm-opt (binaryen) when on PATH or installable from npm (www/tools), else the
#      unoptimised module;
#   5. pkg/: the wasm glue, the Web Worker engine and its main-thread API (www/pkg-src), types,
#      README and package.json. `npm pack` in pkg/ gives the tarball.
# Usage: ./pkg-build.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")"
out=pkg
if [[ "${1:-}" == "--out" ]]; then out="$2"; fi

say() { echo "pkg-build: $*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

say "building the library for wasm32 (release)"
cargo build --lib --release --locked --target wasm32-unknown-unknown

# wasm-bindgen's CLI must match the library version in Cargo.lock exactly.
wb_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [[ -z "$wb_version" ]]; then
    say "no wasm-bindgen in Cargo.lock"; exit 1
fi
if ! command -v wasm-bindgen >/dev/null || [[ "$(wasm-bindgen --version | awk '{print $2}')" != "$wb_version" ]]; then
    say "installing wasm-bindgen-cli $wb_version"
    # --locked first (reproducible); a registry mirror missing one of its pinned dependencies
    # falls back to the newest compatible ones.
    cargo install wasm-bindgen-cli --version "$wb_version" --locked \
        || cargo install wasm-bindgen-cli --version "$wb_version"
fi

rm -rf "$out"
mkdir -p "$out"
wasm-bindgen --target web --out-dir "$out" --out-name webqwen_wasm \
    target/wasm32-unknown-unknown/release/webqwen.wasm
# wasm-opt: binaryen's on PATH, else the pinned npm build in www/tools (installed here when npm
# can reach its registry; WEBQWEN_NO_WASM_OPT=1 skips optimising).
wasm_opt=""
if [[ -z "${WEBQWEN_NO_WASM_OPT:-}" ]]; then
    if command -v wasm-opt >/dev/null; then
        wasm_opt=wasm-opt
    else
        tools=www/tools
        if command -v npm >/dev/null; then
            bash "$tools/npm-ci.sh" "$tools" || say "could not install binaryen from npm"
        fi
        if [[ -x "$tools/node_modules/.bin/wasm-opt" ]]; then wasm_opt="$tools/node_modules/.bin/wasm-opt"; fi
    fi
fi
if [[ -n "$wasm_opt" ]]; then
    say "optimising with $("$wasm_opt" --version)"
    before=$(stat -c %s "$out/webqwen_wasm_bg.wasm")
    # The features rustc's wasm32 target emits by default.
    "$wasm_opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
        --enable-mutable-globals --enable-reference-types --enable-multivalue \
        "$out/webqwen_wasm_bg.wasm" -o "$out/webqwen_wasm_bg.wasm.opt"
    mv "$out/webqwen_wasm_bg.wasm.opt" "$out/webqwen_wasm_bg.wasm"
    say "wasm-opt: $before -> $(stat -c %s "$out/webqwen_wasm_bg.wasm") bytes"
else
    say "no wasm-opt (apt-get install binaryen, or npm in www/tools): keeping the unoptimised module"
fi

cp www/pkg-src/*.js www/pkg-src/*.d.ts www/pkg-src/README.md "$out/"
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
# package.json from www/pkg-src, with the crate's version
sed "s/\"version\": \"[^\"]*\"/\"version\": \"$version\"/" www/pkg-src/package.json > "$out/package.json"
say "wrote $out/ ($(du -h "$out/webqwen_wasm_bg.wasm" | cut -f1) of wasm)"
