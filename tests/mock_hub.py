#!/usr/bin/env python3
"""A tiny stand-in for the Hugging Face hub, for offline tests (stdlib only).

Serves ROOT/<owner>/<name>/<file> the way huggingface.co does, as far as
hf-hub 0.4 (and huggingface_hub) need it:

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
"METHOD PATH RANGE" (one line each, RANGE is "-" when absent), so tests can
count weight downloads.  The first stdout line is the base URL, e.g.
http://127.0.0.1:43125 (useful with --port 0).

usage: mock_hub.py --root DIR [--port 0] [--host 127.0.0.1] [--log FILE] [--no-redirect]
"""
import argparse
import hashlib
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
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
            line = "%s %s %s\n" % (self.command, self.path, self.headers.get("Range", "-"))
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
        siblings = []
        for rel in repo_files(repo_dir):
            full = os.path.join(repo_dir, rel)
            sha256, git = file_hashes(full)
            size = os.path.getsize(full)
            sib = {"rfilename": rel, "size": size, "blobId": git}
            if rel.endswith(LFS_SUFFIXES):
                sib["lfs"] = {"sha256": sha256, "size": size, "pointerSize": 134}
            siblings.append(sib)
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
        headers = {"x-repo-commit": commit}
        if rel.endswith(LFS_SUFFIXES):
            headers["x-linked-etag"] = '"%s"' % sha256
            headers["x-linked-size"] = str(os.path.getsize(full))
            headers["etag"] = '"%s"' % git
            if self.server.redirect:
                self.server.lfs[sha256] = full
                # another origin, like the hub's CDN: clients must not take
                # the file metadata (or the auth header) from there
                host = (self.headers.get("Host") or self.server.server_address[0]).rsplit(":", 1)[0]
                headers["Location"] = "http://%s:%d/lfs/%s" % (host, self.server.cdn_port, sha256)
                self._send(302, b"", headers, "text/plain")
                return
        else:
            headers["etag"] = '"%s"' % git
        self._serve_file(full, headers)

    def _serve_file(self, full, headers):
        size = os.path.getsize(full)
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
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(full, "rb") as f:
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
    args = ap.parse_args()
    if not os.path.isdir(args.root):
        sys.exit("mock_hub: --root %s is not a directory" % args.root)
    server = Server((args.host, args.port), Handler)
    server.root = os.path.abspath(args.root)
    server.log_path = args.log
    server.redirect = not args.no_redirect
    server.lfs = {}
    cdn = Server((args.host, 0), Handler)  # same handler; it is only asked for /lfs/
    cdn.root, cdn.log_path, cdn.redirect, cdn.lfs = server.root, server.log_path, False, server.lfs
    server.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print("http://%s:%d" % (args.host, server.server_address[1]), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
