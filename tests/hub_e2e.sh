#!/usr/bin/env bash
# End-to-end check of `--model owner/name` against a local mock of the Hugging
# Face hub (tests/mock_hub.py), with the real binary:
#   download into a fresh HF cache, reuse without re-downloading, work with the
#   hub gone and with HF_HUB_OFFLINE=1, clear errors for unknown repos.
#
# usage: tests/hub_e2e.sh MODEL_DIR
#   MODEL_DIR  a local Qwen3 MLX model directory; served as repo test-org/tiny
#   WEBQWEN    the binary (default: target/release/webqwen, else target/debug/webqwen)
set -euo pipefail

fail() { echo "hub_e2e: FAIL: $*" >&2; exit 1; }

here="$(cd "$(dirname "$0")" && pwd)"
model="${1:-}"
[[ -n "$model" && -f "$model/config.json" ]] || fail "usage: $0 MODEL_DIR (a directory with config.json)"
model="$(cd "$model" && pwd -P)"
bin="${WEBQWEN:-}"
if [[ -z "$bin" ]]; then
    for b in "$here/../target/release/webqwen" "$here/../target/debug/webqwen"; do
        [[ -x "$b" ]] && { bin="$b"; break; }
    done
fi
[[ -n "$bin" && -x "$bin" ]] || fail "no webqwen binary; build it or set WEBQWEN=path"
command -v python3 >/dev/null || fail "python3 is needed for the mock hub"

tmp="$(mktemp -d)"
server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

mkdir -p "$tmp/root/test-org"
ln -s "$model" "$tmp/root/test-org/tiny"
log="$tmp/requests.log"
touch "$log"
python3 "$here/mock_hub.py" --root "$tmp/root" --port 0 --log "$log" >"$tmp/url" 2>"$tmp/server.err" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$tmp/url" ]] && break; sleep 0.1; done
url="$(head -n1 "$tmp/url")"
[[ "$url" == http://* ]] || fail "mock hub did not start: $(cat "$tmp/server.err")"
echo "hub_e2e: mock hub at $url serving $model as test-org/tiny"

export HF_ENDPOINT="$url" HF_HOME="$tmp/hf"
unset HF_HUB_CACHE HF_HUB_OFFLINE HF_TOKEN HUGGING_FACE_HUB_TOKEN

run() { # run NAME ARGS...: the binary must succeed; keeps stdout in $tmp/NAME.out
    local name="$1"; shift
    if ! "$bin" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        cat "$tmp/$name.err" >&2
        fail "$name: webqwen $* exited non-zero"
    fi
}
weight_bodies() { # weight contents served (the mock serves weights from /lfs/; not the 1-byte size probes)
    grep -E '^GET /lfs/' "$log" | grep -vc ' bytes=0-0$' || true
}

# 1. First run downloads into the standard cache layout.
run download info --model test-org/tiny
snapshot_dir=("$HF_HOME"/hub/models--test-org--tiny/snapshots/*)
[[ ${#snapshot_dir[@]} -eq 1 && -d "${snapshot_dir[0]}" ]] || fail "expected one snapshot under $HF_HOME/hub/models--test-org--tiny/snapshots"
snap="${snapshot_dir[0]}"
[[ "$(cat "$HF_HOME/hub/models--test-org--tiny/refs/main")" == "$(basename "$snap")" ]] || fail "refs/main does not name the snapshot"
n_weights=0
for f in "$model"/*.safetensors; do
    [[ -e "$f" ]] || continue
    cmp -s "$f" "$snap/$(basename "$f")" || fail "$(basename "$f") missing or different in $snap"
    n_weights=$((n_weights + 1))
done
[[ $n_weights -gt 0 ]] || fail "no *.safetensors in $model"
cmp -s "$model/config.json" "$snap/config.json" || fail "config.json differs in $snap"
hidden=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("hidden_size", ""))' "$model/config.json")
[[ -z "$hidden" ]] || grep -q "$hidden" "$tmp/download.out" || fail "info output does not show hidden_size $hidden: $(cat "$tmp/download.out")"
bodies=$(weight_bodies)
[[ $bodies -eq $n_weights ]] || fail "expected $n_weights weight downloads, the hub saw $bodies"
echo "hub_e2e: downloaded $n_weights weight file(s) into $snap"

# 2. Second run with the hub up: nothing downloaded again.
run cached info --model test-org/tiny
[[ $(weight_bodies) -eq $bodies ]] || fail "weights were downloaded again although cached"
cmp -s "$tmp/download.out" "$tmp/cached.out" || fail "cached run printed something else than the first run"

# 3. Unknown repo: a clear error, non-zero exit.
if "$bin" info --model test-org/does-not-exist >/dev/null 2>"$tmp/missing.err"; then
    fail "unknown repo test-org/does-not-exist did not fail"
fi
grep -qi "does-not-exist" "$tmp/missing.err" || fail "unknown-repo error does not name the repo: $(cat "$tmp/missing.err")"
echo "hub_e2e: unknown repo -> $(head -n1 "$tmp/missing.err")"

# 4. Hub gone: the cached model still works, offline mode too.
stop_server
run unreachable info --model test-org/tiny
HF_HUB_OFFLINE=1 run offline info --model test-org/tiny
if "$bin" info --model test-org/not-cached >/dev/null 2>"$tmp/down.err"; then
    fail "an uncached repo resolved with the hub down"
fi
grep -q "HF_ENDPOINT" "$tmp/down.err" || fail "unreachable-hub error does not mention HF_ENDPOINT: $(cat "$tmp/down.err")"
echo "hub_e2e: hub down -> $(head -n1 "$tmp/down.err")"

echo "hub_e2e: OK"
