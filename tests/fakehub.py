"""A fake Hugging Face Hub for tests: the few routes snapshot_download and hf_hub_download use."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], commit: str = "f" * 40):
        self.repos, self.commit, self.requests = repos, commit, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                status, headers, data = hub.route(path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, path: str):
        for repo, files in self.repos.items():
            if path.startswith(f"/api/models/{repo}/revision/"):
                return 200, {"Content-Type": "application/json"}, json.dumps(
                    {"id": repo, "sha": self.commit, "siblings": [{"rfilename": f} for f in files]}).encode()
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in files.items()]
                return 200, {"Content-Type": "application/json"}, json.dumps(tree).encode()
            if path.startswith(f"/{repo}/resolve/"):
                name = path.split("/", 5)[-1]
                if name in files:
                    data = files[name]
                    return 200, {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}, data
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit}, b"{}"
        return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "Repository not found"}'

    def close(self):
        self.server.shutdown()
        self.server.server_close()
