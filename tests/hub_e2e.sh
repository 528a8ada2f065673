#!/usr/bin/env bash
# End-to-end check of `--model owner/name` against a local mock of the Hugging
# Face hub (tests/mock_hub.py), with the real binary:
#   download into a fresh HF cache (the token going to the hub only, not to the
#   CDN), reuse without re-downloading, a cache Python's huggingface_hub reads,
#   a new commit reusing unchanged blobs, a damaged cached blob found and
#   replaced, an unfinished download resumed, work with the hub gone and with HF_HUB_OFFLINE=1, clear errors for
#   unknown repos; then every malicious or broken hub of `mock_hub.py --evil`:
#   nothing may be created outside the cache, no link in the cache may lead out
#   of it, and the run must fail with a clear message (or, for broken resumes,
#   end with the right bytes).
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
tmp="$(cd "$tmp" && pwd -P)"
server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

start_server() { # start_server LOG [mock_hub.py flags...]: sets $url and $server_pid
    local log="$1"; shift
    touch "$log"
    rm -f "$tmp/url"
    python3 "$here/mock_hub.py" --root "$tmp/root" --port 0 --log "$log" "$@" >"$tmp/url" 2>"$tmp/server.err" &
    server_pid=$!
    for _ in $(seq 100); do [[ -s "$tmp/url" ]] && break; sleep 0.1; done
    url="$(head -n1 "$tmp/url")"
    [[ "$url" == http://* ]] || fail "mock hub did not start: $(cat "$tmp/server.err")"
}

mkdir -p "$tmp/root/test-org"
ln -s "$model" "$tmp/root/test-org/tiny"
log="$tmp/requests.log"
start_server "$log"
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
# Log lines are "METHOD PATH RANGE AUTH"; weights are served from /lfs/ (the "CDN").
weight_bodies() { # weight contents served (not the 1-byte size probes older clients make)
    awk '$1 == "GET" && $2 ~ /^\/lfs\// && $3 != "bytes=0-0"' "$log" | wc -l
}
flip_byte() { # flip_byte FILE: changes one byte in the middle, in place (through a link)
    python3 -c 'import os,sys
with open(sys.argv[1], "r+b") as f:
    f.seek(os.path.getsize(sys.argv[1]) // 2); b = f.read(1); f.seek(-1, 1); f.write(bytes([b[0] ^ 1]))' "$1"
}

# 1. First run downloads into the standard cache layout; the token goes to the hub, not the CDN.
HF_TOKEN=hub-e2e-token run download info --model test-org/tiny
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
for f in "$snap"/*; do
    [[ -L "$f" && "$(readlink "$f")" == ../../blobs/* ]] || fail "$f is not a link ../../blobs/<hash> as huggingface_hub makes it"
done
hidden=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("hidden_size", ""))' "$model/config.json")
[[ -z "$hidden" ]] || grep -q "$hidden" "$tmp/download.out" || fail "info output does not show hidden_size $hidden: $(cat "$tmp/download.out")"
bodies=$(weight_bodies)
[[ $bodies -eq $n_weights ]] || fail "expected $n_weights weight downloads, the hub saw $bodies"
grep -qE '^GET /api/.* auth$' "$log" || fail "the token was not sent to the hub's API"
if grep -E '^GET /lfs/.* auth$' "$log" >/dev/null; then fail "the token was sent to the CDN (another origin)"; fi
echo "hub_e2e: downloaded $n_weights weight file(s) into $snap; token sent to the hub only"

# 2. Second run with the hub up: nothing downloaded again.
run cached info --model test-org/tiny
[[ $(weight_bodies) -eq $bodies ]] || fail "weights were downloaded again although cached"
cmp -s "$tmp/download.out" "$tmp/cached.out" || fail "cached run printed something else than the first run"

# 2b. Python's huggingface_hub reads the cache (mlx-lm installs it; skipped where it is missing).
if python3 -c 'import huggingface_hub' 2>/dev/null; then
    python3 - "$HF_HOME/hub" "$snap" <<'PY' || fail "huggingface_hub cannot use the cache webqwen wrote"
import filecmp, os, sys
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
cache, snap = sys.argv[1], sys.argv[2]
path = snapshot_download("test-org/tiny", local_files_only=True, cache_dir=cache)
assert os.path.realpath(path) == os.path.realpath(snap), (path, snap)
names = sorted(os.listdir(snap))
for name in names:
    got = hf_hub_download("test-org/tiny", name, local_files_only=True, cache_dir=cache)
    assert filecmp.cmp(got, os.path.join(snap, name), shallow=False), name
info = scan_cache_dir(cache)
assert not info.warnings, info.warnings
(repo,) = [r for r in info.repos if r.repo_id == "test-org/tiny"]
(rev,) = repo.revisions
assert "main" in rev.refs and sorted(f.file_name for f in rev.files) == names, (rev.refs, rev.files)
print("hub_e2e: huggingface_hub %s finds all %d files offline" % (__import__("huggingface_hub").__version__, len(names)))
PY
else
    echo "hub_e2e: huggingface_hub not importable; Python cache check skipped"
fi

# 3. Unknown repo: a clear error, non-zero exit.
if "$bin" info --model test-org/does-not-exist >/dev/null 2>"$tmp/missing.err"; then
    fail "unknown repo test-org/does-not-exist did not fail"
fi
grep -qi "does-not-exist" "$tmp/missing.err" || fail "unknown-repo error does not name the repo: $(cat "$tmp/missing.err")"
echo "hub_e2e: unknown repo -> $(head -n1 "$tmp/missing.err")"

# 3b. A damaged cached weight file is found: online it is downloaded again, offline refused.
weight="$snap/$(basename "$(ls "$model"/*.safetensors | head -n1)")"
flip_byte "$weight"
before=$(weight_bodies)
run tampered info --model test-org/tiny
[[ $(weight_bodies) -eq $((before + 1)) ]] || fail "a damaged cached weight file was not downloaded again"
cmp -s "$weight" "$model/$(basename "$weight")" || fail "$weight still differs after the download"
echo "hub_e2e: damaged blob online -> $(grep -m1 . "$tmp/tampered.err"), downloaded again"
flip_byte "$weight"
if HF_HUB_OFFLINE=1 "$bin" info --model test-org/tiny >/dev/null 2>"$tmp/tampered-offline.err"; then
    fail "a damaged cached weight file was used offline"
fi
grep -q "damaged" "$tmp/tampered-offline.err" || fail "damaged-blob error is unclear: $(cat "$tmp/tampered-offline.err")"
echo "hub_e2e: damaged blob offline -> $(grep -m1 damaged "$tmp/tampered-offline.err")"
run repaired info --model test-org/tiny
cmp -s "$weight" "$model/$(basename "$weight")" || fail "$weight was not repaired"

# 3c. A new commit that keeps the weights links the cached blobs instead of downloading them.
mkdir -p "$tmp/root/test-org/tiny2"
for f in "$model"/*; do [[ -f "$f" ]] && ln -s "$f" "$tmp/root/test-org/tiny2/"; done
echo "first" >"$tmp/root/test-org/tiny2/NOTES.md"
run tiny2 info --model test-org/tiny2
before=$(weight_bodies)
echo "second" >"$tmp/root/test-org/tiny2/NOTES.md"
run tiny2-new info --model test-org/tiny2
[[ $(weight_bodies) -eq $before ]] || fail "a new commit with unchanged weights downloaded them again"
[[ $(ls -d "$HF_HOME"/hub/models--test-org--tiny2/snapshots/* | wc -l) -eq 2 ]] || fail "expected two snapshots of test-org/tiny2"
echo "hub_e2e: new commit reuses the cached blobs"

# 3d. A download an earlier run left unfinished (blobs/<sha256>.incomplete, the name
# huggingface_hub uses too) is resumed where it stopped.
w="$(ls "$model"/*.safetensors | head -n1)"
sha=$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$w")
half=$(( $(wc -c <"$w") / 2 ))
mkdir -p "$tmp/hf-resume/hub/models--test-org--tiny/blobs"
head -c "$half" "$w" >"$tmp/hf-resume/hub/models--test-org--tiny/blobs/$sha.incomplete"
HF_HOME="$tmp/hf-resume" run resume info --model test-org/tiny
grep -qE "^GET /lfs/$sha bytes=$half- " "$log" || fail "the unfinished download was not resumed from byte $half"
cmp -s "$w" "$tmp/hf-resume/hub/models--test-org--tiny/snapshots/"*/"$(basename "$w")" || fail "the resumed $(basename "$w") differs"
echo "hub_e2e: unfinished download resumed from byte $half"

# 4. Hub gone: the cached model still works, offline mode too.
stop_server
run unreachable info --model test-org/tiny
HF_HUB_OFFLINE=1 run offline info --model test-org/tiny
if "$bin" info --model test-org/not-cached >/dev/null 2>"$tmp/down.err"; then
    fail "an uncached repo resolved with the hub down"
fi
grep -q "HF_ENDPOINT" "$tmp/down.err" || fail "unreachable-hub error does not mention HF_ENDPOINT: $(cat "$tmp/down.err")"
echo "hub_e2e: hub down -> $(head -n1 "$tmp/down.err")"

# 5. Malicious and broken hubs. Each runs in its own sandbox: HF_HOME is
# <sandbox>/hf, "../../../../" from the cache's blobs/ leads to <sandbox>, and
# <sandbox>/secret is a file a hub would like the cache to point at.
failures=()
evil() { # evil MODE refuse REGEX | evil MODE recover
    local mode="$1" expect="$2" pattern="${3:-}"
    local sb="$tmp/evil/$mode" problems=() rc=0
    mkdir -p "$sb/hf/hub"
    echo "not weights" >"$sb/secret"
    local cache; cache="$(cd "$sb/hf/hub" && pwd -P)"
    local before; before="$(cd "$sb" && find . -path ./hf/hub -prune -o -print | LC_ALL=C sort)"
    log="$sb.log"
    start_server "$log" --evil "$mode" --evil-dir "$sb"
    HF_HOME="$sb/hf" HF_ENDPOINT="$url" timeout 300 "$bin" info --model test-org/tiny >"$sb.out" 2>"$sb.err" || rc=$?
    stop_server
    local after; after="$(cd "$sb" && find . -path ./hf/hub -prune -o -print | LC_ALL=C sort)"
    [[ "$before" == "$after" ]] || problems+=("created outside the cache: $(LC_ALL=C comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')")
    while IFS= read -r -d '' link; do
        [[ "$(readlink -m "$link")" == "$cache"/* ]] || problems+=("${link#"$sb"/} -> $(readlink "$link") leads out of the cache")
    done < <(find "$sb/hf/hub" -type l -print0)
    while IFS= read -r -d '' ref; do
        grep -qxE '[0-9a-f]{40}' "$ref" || problems+=("${ref#"$sb"/} holds $(head -c 80 "$ref")")
    done < <(find "$sb/hf/hub" -path '*/refs/*' -type f -print0)
    if [[ "$expect" == refuse ]]; then
        [[ $rc -ne 0 ]] || problems+=("exit status 0")
        grep -qE "$pattern" "$sb.err" || problems+=("no clear error (/$pattern/): $(head -c 300 "$sb.err")")
    else
        [[ $rc -eq 0 ]] || problems+=("exit status $rc: $(head -c 300 "$sb.err")")
        grep -qE '^GET /lfs/[^ ]+ bytes=[1-9][0-9]*- ' "$log" || problems+=("the test did not make it resume")
        local f snap_evil=("$sb"/hf/hub/models--test-org--tiny/snapshots/*)
        for f in "$model"/*.safetensors; do
            cmp -s "$f" "${snap_evil[0]}/$(basename "$f")" || problems+=("$(basename "$f") differs from the served file")
        done
    fi
    if [[ ${#problems[@]} -eq 0 ]]; then
        echo "hub_e2e: --evil $mode -> $(if [[ $rc -ne 0 ]]; then grep -m1 -E "$pattern" "$sb.err"; else echo "exit 0, right bytes"; fi)"
    else
        failures+=("$mode")
        echo "hub_e2e: --evil $mode:" >&2
        printf '    %s\n' "${problems[@]}" >&2
    fi
}
evil etag-abs refuse 'etag .* not a hex hash'
evil etag-dotdot refuse 'etag .* not a hex hash'
evil commit-dotdot refuse 'x-repo-commit .* not a commit id'
evil sha-dotdot refuse 'as the commit id, not 40'
evil lfs-sha-path refuse 'lfs\.sha256 .* not 64'
evil blobid-path refuse 'blobId .* not 40'
evil rfilename-dotdot refuse 'invalid shard file|not a plain relative file name'
evil wrong-content refuse 'does not match the hub.s listing: its sha256'
evil wrong-blob refuse 'does not match the hub.s listing: its git blob id'
evil oversize refuse 'listing gives it [0-9]+ bytes'
evil truncate recover
evil range-no-content-range recover
evil range-wrong-content-range recover
[[ ${#failures[@]} -eq 0 ]] || fail "malicious or broken hubs not handled: ${failures[*]}"

echo "hub_e2e: OK"
