#!/usr/bin/env python3
"""A tiny stand-in for the Hugging Face hub, for offline tests (stdlib only).

Serves ROOT/<owner>/<name>/<file> the way huggingface.co does, as far as
webqwen (and huggingface_hub, and the hf-hub crate) need it:

  GET /api/models/<owner>/<name>[/revision/<rev>][?blobs=true]
      -> {"id", "sha", "siblings": [{"rfilename", "size", "blobId", "lfs"?}]}
  GET /api/models/<owner>/<name>/tree/<rev>   (huggingface_hub's snapshot_download)
  GET|HEAD /<owner>/<name>/resolve/<rev>/<file>
      -> 200/206 with Range support, `content-range`, `x-repo-commit`, and
         `etag` (git blob sha1) or, for LFS-like files, `x-linked-etag`
         (sha256) + `x-linked-size`.  *.safetensors are redirected (302) to
         http://<host>:<second port>/lfs/<sha256>, a "CDN" on another origin
         like the hub's, unless --no-redirect.
  Unknown repo -> 404 `x-error-code: RepositoryNotFound`, unknown revision ->
  404 `RevisionNotFound`, missing file -> 404 `EntryNotFound`.

<rev> may be "main" or the repo's commit, a fake sha1 over its file hashes
(so it changes when a file changes).  Every request is appended to --log as
"METHOD PATH RANGE AUTH" (one line each; RANGE is "-" when absent, AUTH is
"auth" when an Authorization header came, else "-"), so tests can count weight
downloads and see where the token went.  The first stdout line is the base
URL, e.g. http://127.0.0.1:43125 (useful with --port 0).

--evil MODE makes it a malicious or broken hub (the listing keeps the true
hashes and sizes unless the mode changes them).  "../../../../" below leads
from a cache's blobs/ or snapshots/ dir up to the dir holding HF_HOME
(<dir>/hf/hub/models--x--y/blobs): tests make that dir their sandbox.
  etag-abs          etag and x-linked-etag: "<--evil-dir>/pwned-etag-abs"
  etag-dotdot       etag and x-linked-etag: "../../../../pwned-etag-dotdot"
  commit-dotdot     x-repo-commit: ../../../../pwned-commit
  sha-dotdot        listing sha and x-repo-commit: ../../../../pwned-sha
  lfs-sha-path      listing lfs.sha256 of LFS files: ../../../../secret
  blobid-path       listing blobId of non-LFS files: ../../../../secret
  rfilename-dotdot  the index names, and the listing has, a shard
                    ../../../../pwned-shard.safetensors
  wrong-content     LFS files served with their last byte flipped
  wrong-blob        non-LFS files served with one space turned into a tab
  oversize          non-LFS files served with 4096 extra spaces
  truncate          the first full GET of an LFS file breaks off halfway
                    (resuming with bytes=N- works)
  range-no-content-range     truncate, and resuming (bytes=N-, N > 0) gets
                    206 with the whole file and no Content-Range
  range-wrong-content-range  the same, but 206 with Content-Range bytes 0-

usage: mock_hub.py --root DIR [--port 0] [--host 127.0.0.1] [--log FILE] [--no-redirect]
                   [--evil MODE [--evil-dir DIR]]
"""
import argparse
import hashlib
import io
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
INDEX = "model.safetensors.index.json"
UP = "../../../../"
EVIL_MODES = ("etag-abs", "etag-dotdot", "commit-dotdot", "sha-dotdot", "lfs-sha-path", "blobid-path",
              "rfilename-dotdot", "wrong-content", "wrong-blob", "oversize", "truncate",
              "range-no-content-range", "range-wrong-content-range")
EVIL_SHARD = UP + "pwned-shard.safetensors"
_cache = {}  # (path, mtime, size) -> (sha256, git sha1); hashing GBs once is enough
_log_lock = threading.Lock()


def file_hashes(path):
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _cache:
        sha256, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % st.st_size)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha256.update(chunk)
                git.update(chunk)
        _cache[key] = (sha256.hexdigest(), git.hexdigest())
    return _cache[key]


def bytes_hashes(data):
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def evil_index(repo_dir):
    """rfilename-dotdot: the repo's index with every shard renamed to EVIL_SHARD."""
    with open(os.path.join(repo_dir, INDEX), "rb") as f:
        index = json.load(f)
    index["weight_map"] = {k: EVIL_SHARD for k in index.get("weight_map", {})}
    return json.dumps(index, indent=2).encode()


def repo_files(repo_dir):
    out = []
    for dirpath, dirnames, filenames in os.walk(repo_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                full = os.path.join(dirpath, name)
                out.append(os.path.relpath(full, repo_dir).replace(os.sep, "/"))
    return out


def repo_commit(repo_dir):
    h = hashlib.sha1()
    for rel in repo_files(repo_dir):
        h.update(rel.encode() + b"\0" + file_hashes(os.path.join(repo_dir, rel))[0].encode())
    return h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real hub
    server_version = "mock-hub/0.1"

    def log_message(self, fmt, *args):  # quiet stderr; we log to --log instead
        pass

    def _log(self):
        if self.server.log_path:
            auth = "auth" if self.headers.get("Authorization") else "-"
            line = "%s %s %s %s\n" % (self.command, self.path, self.headers.get("Range", "-"), auth)
            with _log_lock, open(self.server.log_path, "a") as f:
                f.write(line)

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, code, message):
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"x-error-code": code, "x-error-message": message})

    def _repo(self, owner, name, rev):
        """(repo_dir, commit) or None after answering with the right 404."""
        repo_dir = os.path.join(self.server.root, owner, name)
        if not (re.fullmatch(r"[\w.-]+", owner) and re.fullmatch(r"[\w.-]+", name)) or not os.path.isdir(repo_dir):
            self._error(404, "RepositoryNotFound", "Repository not found")
            return None
        commit = repo_commit(repo_dir)
        if rev not in ("main", commit):
            self._error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
            return None
        return repo_dir, commit

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self._log()
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/api/models/([^/]+)/([^/]+)(?:/revision/([^/]+))?/?", path)
        if m:
            return self._api_info(m.group(1), m.group(2), unquote(m.group(3) or "main"))
        m = re.fullmatch(r"/api/models/([^/]+)/([^/]+)/tree/([^/]+)(?:/.*)?", path)
        if m:  # huggingface_hub's snapshot_download lists files this way
            return self._api_tree(m.group(1), m.group(2), unquote(m.group(3)))
        m = re.fullmatch(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), unquote(m.group(3)), unquote(m.group(4)))
        m = re.fullmatch(r"/lfs/([0-9a-f]{64})", path)
        if m and m.group(1) in self.server.lfs:
            return self._serve_file(self.server.lfs[m.group(1)], {})
        self._error(404, "NotFound", "Not found: %s" % path)

    def _api_info(self, owner, name, rev):
        found = self._repo(owner, name, rev)
        if not found:
            return
        repo_dir, commit = found
        evil = self.server.evil
        siblings = []
        for rel in repo_files(repo_dir):
            full = os.path.join(repo_dir, rel)
            sha256, git = file_hashes(full)
            size = os.path.getsize(full)
            if evil == "rfilename-dotdot" and rel == INDEX:
                data = evil_index(repo_dir)
                (sha256, git), size = bytes_hashes(data), len(data)
            sib = {"rfilename": rel, "size": size, "blobId": git}
            if rel.endswith(LFS_SUFFIXES):
                sib["lfs"] = {"sha256": sha256, "size": size, "pointerSize": 134}
                if evil == "lfs-sha-path":
                    sib["lfs"]["sha256"] = UP + "secret"
            elif evil == "blobid-path":
                sib["blobId"] = UP + "secret"
            siblings.append(sib)
            if evil == "rfilename-dotdot" and rel.endswith(".safetensors"):
                siblings.append(dict(sib, rfilename=EVIL_SHARD))
        if evil == "sha-dotdot":
            commit = UP + "pwned-sha"
        body = {"id": "%s/%s" % (owner, name), "modelId": "%s/%s" % (owner, name), "sha": commit,
                "private": False, "gated": False, "siblings": siblings}
        self._send(200, json.dumps(body).encode())

    def _api_tree(self, owner, name, rev):
        found = self._repo(owner, name, rev)
        if not found:
            return
        repo_dir, _ = found
        entries = []
        for rel in repo_files(repo_dir):  # flat listing, as with ?recursive=true
            full = os.path.join(repo_dir, rel)
            sha256, git = file_hashes(full)
            size = os.path.getsize(full)
            entry = {"type": "file", "oid": git, "size": size, "path": rel}
            if rel.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
            entries.append(entry)
        self._send(200, json.dumps(entries).encode())

    def _resolve(self, owner, name, rev, rel):
        found = self._repo(owner, name, rev)
        if not found:
            return
        repo_dir, commit = found
        # no realpath check: a model dir may be an HF cache snapshot of symlinks
        full = os.path.join(repo_dir, rel)
        if any(p.startswith(".") or not p for p in rel.split("/")) or not os.path.isfile(full):
            self._error(404, "EntryNotFound", "Entry not found: %s" % rel)
            return
        sha256, git = file_hashes(full)
        if self.server.evil == "rfilename-dotdot" and rel == INDEX:
            sha256, git = bytes_hashes(evil_index(repo_dir))
        headers = {"x-repo-commit": commit}
        if rel.endswith(LFS_SUFFIXES):
            headers["x-linked-etag"] = '"%s"' % sha256
            headers["x-linked-size"] = str(os.path.getsize(full))
            headers["etag"] = '"%s"' % git
        else:
            headers["etag"] = '"%s"' % git
        evil = self.server.evil
        if evil in ("etag-abs", "etag-dotdot"):
            tag = self.server.evil_dir + "/pwned-etag-abs" if evil == "etag-abs" else UP + "pwned-etag-dotdot"
            headers["etag"] = '"%s"' % tag
            if "x-linked-etag" in headers:
                headers["x-linked-etag"] = '"%s"' % tag
        elif evil in ("commit-dotdot", "sha-dotdot"):
            headers["x-repo-commit"] = UP + ("pwned-commit" if evil == "commit-dotdot" else "pwned-sha")
        if rel.endswith(LFS_SUFFIXES) and self.server.redirect:
            self.server.lfs[sha256] = full
            # another origin, like the hub's CDN: clients must not take
            # the file metadata (or the auth header) from there
            host = (self.headers.get("Host") or self.server.server_address[0]).rsplit(":", 1)[0]
            headers["Location"] = "http://%s:%d/lfs/%s" % (host, self.server.cdn_port, sha256)
            self._send(302, b"", headers, "text/plain")
            return
        self._serve_file(full, headers)

    def _content(self, full):
        """The bytes served for a file in the malicious modes that change them, else None."""
        evil, lfs = self.server.evil, full.endswith(LFS_SUFFIXES)
        if evil == "rfilename-dotdot" and os.path.basename(full) == INDEX:
            return evil_index(os.path.dirname(full))
        if evil not in ("wrong-content", "wrong-blob", "oversize") or lfs != (evil == "wrong-content"):
            return None
        with open(full, "rb") as f:
            data = bytearray(f.read())
        if evil == "wrong-content" and data:
            data[-1] ^= 1
        elif evil == "wrong-blob":
            data = data.replace(b" ", b"\t", 1) if b" " in data else data + b"\n"
        elif evil == "oversize":
            data += b" " * 4096
        return bytes(data)

    def _broken_range(self, full, start, size):
        """truncate and range-*: None, "truncate" (break off the first full GET
        of an LFS file) or "bad-206" (answer a resume badly)."""
        evil = self.server.evil
        if not (evil == "truncate" or evil.startswith("range-")) or not full.endswith(LFS_SUFFIXES) or self.command == "HEAD":
            return None
        rng = self.headers.get("Range", "").strip()
        if rng in ("", "bytes=0-"):
            with _log_lock:
                first = full not in self.server.full_gets
                self.server.full_gets.add(full)
            return "truncate" if first and size > 1 else None
        return "bad-206" if evil != "truncate" and re.fullmatch(r"bytes=[1-9]\d*-", rng) else None

    def _serve_file(self, full, headers):
        data = self._content(full)
        size = os.path.getsize(full) if data is None else len(data)
        headers = dict(headers, **{"Accept-Ranges": "bytes"})
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if m and size > 0:
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            elif m.group(2):  # suffix range: last N bytes
                start = max(size - int(m.group(2)), 0)
            if start > end:
                headers["Content-Range"] = "bytes */%d" % size
                self._send(416, b"", headers, "text/plain")
                return
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
        elif m:  # empty file: nothing to range over, still tell the size
            headers["Content-Range"] = "bytes */0"
        broken = self._broken_range(full, start, size)
        if broken == "bad-206":
            start, end, status = 0, size - 1, 206
            if self.server.evil == "range-no-content-range":
                headers.pop("Content-Range", None)
            else:
                headers["Content-Range"] = "bytes 0-%d/%d" % (size - 1, size)
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if broken == "truncate":  # the connection drops halfway
            length = length // 2
            self.close_connection = True
        with (open(full, "rb") if data is None else io.BytesIO(data)) as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                left -= len(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # clients dropping keep-alive connections is normal, not worth a traceback
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="directory holding <owner>/<name>/ model dirs")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", help="append 'METHOD PATH RANGE' per request to this file")
    ap.add_argument("--no-redirect", action="store_true", help="serve weights directly, no 302")
    ap.add_argument("--evil", choices=EVIL_MODES, help="answer like a malicious or broken hub (see above)")
    ap.add_argument("--evil-dir", help="absolute dir for --evil etag-abs")
    args = ap.parse_args()
    if not os.path.isdir(args.root):
        sys.exit("mock_hub: --root %s is not a directory" % args.root)
    if args.evil == "etag-abs" and not (args.evil_dir and os.path.isabs(args.evil_dir)):
        sys.exit("mock_hub: --evil etag-abs needs an absolute --evil-dir")
    server = Server((args.host, args.port), Handler)
    server.root = os.path.abspath(args.root)
    server.log_path = args.log
    server.redirect = not args.no_redirect
    server.lfs = {}
    server.evil, server.evil_dir, server.full_gets = args.evil or "", args.evil_dir, set()
    cdn = Server((args.host, 0), Handler)  # same handler; it is only asked for /lfs/
    cdn.root, cdn.log_path, cdn.redirect, cdn.lfs = server.root, server.log_path, False, server.lfs
    cdn.evil, cdn.evil_dir, cdn.full_gets = server.evil, server.evil_dir, server.full_gets
    server.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print("http://%s:%d" % (args.host, server.server_address[1]), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
