"""A small Hugging Face Hub on loopback for push and read tests: `HfApi(endpoint=hub.url)` (or `HF_ENDPOINT`) talks
to it.

It answers the HTTP calls the real client makes for `create_repo`, `create_branch` and `upload_folder` (README
metadata validation, preupload, then an NDJSON commit) the way the Hub does (401 without a token, 404 for an unknown
repo or branch, 409 for an existing repo or branch), and for reading: `hf_hub_download` / `ModelCard.load`
(`HEAD`/`GET /{repo}/resolve/{revision}/{path}` with the headers the client requires: X-Repo-Commit, a quoted ETag
(the file's git blob sha1) and Content-Length; X-Error-Code RepoNotFound, RevisionNotFound or EntryNotFound
otherwise) and `HfApi.list_models` (`GET /api/models?filter=...&author=...&limit=...`, pages of `page_size` linked by
a `Link: <...>; rel="next"` header, a model's tags read from its README's metadata as the Hub derives them). Every
other route gets 404, so a client method that is renamed, removed or sends another request fails the test. Every
file is declared "regular" at preupload, so commits carry the bytes inline (base64) and the fake can store exactly
what was pushed; LFS/Xet storage is not emulated.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlparse

REPO_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$")
RESOLVE_ROUTE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
SPACE_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def metadata_errors(content: str, repo_type: str) -> list:
    """The Hub's checks of a README's YAML front matter, for the fields our cards use (types and allowed values of
    the model, dataset and Space card specs: https://huggingface.co/docs/hub/model-cards and friends)."""
    meta = _front_matter(content)
    if isinstance(meta, str):
        return [meta]
    errors = []
    for key in ("license", "tags", "language"):
        errors += _strings_errors(meta, key)
    errors += _strings_errors(meta, "datasets", REPO_ID)
    by_type = {"model": _model_errors, "dataset": _dataset_errors, "space": _space_errors}
    if repo_type in by_type:
        errors += by_type[repo_type](meta)
    return errors


def _front_matter(content: str):
    """The README's metadata mapping, or the one-line reason there is none."""
    import yaml

    if not content.startswith("---\n") or "\n---" not in content[4:]:
        return "no YAML front matter"
    try:
        meta = yaml.safe_load(content[4 : content.index("\n---", 3)])
    except yaml.YAMLError as error:
        return f"YAML does not parse: {error}"
    return meta if isinstance(meta, dict) else "the metadata is not a mapping"


def _strings_errors(meta: dict, key: str, pattern=None) -> list:
    value = meta.get(key)
    values = [value] if isinstance(value, str) else value
    if value is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
        return [f"{key}: must be a string or a list of strings"]
    if value is not None and pattern is not None and not all(pattern.match(v) for v in values):
        return [f"{key}: {values} are not all repo ids"]
    return []


def _model_errors(meta: dict) -> list:
    errors = _strings_errors(meta, "base_model", REPO_ID)
    for key in ("pipeline_tag", "library_name"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f"{key}: must be a string")
    for entry in meta.get("model-index") or []:
        if not isinstance(entry.get("name"), str) or not isinstance(entry.get("results"), list):
            errors.append("model-index: each entry needs a name and a list of results")
    return errors


def _dataset_errors(meta: dict) -> list:
    return [
        "configs: each config needs config_name and data_files"
        for config in meta.get("configs") or []
        if not isinstance(config.get("config_name"), str) or not config.get("data_files")
    ]


def _space_errors(meta: dict) -> list:
    errors = _strings_errors(meta, "models", REPO_ID)
    if meta.get("sdk") not in ("gradio", "docker", "static", "streamlit"):
        errors.append(f"sdk: {meta.get('sdk')!r} is not a Space SDK")
    if meta.get("sdk") == "gradio" and not re.match(r"^\d+\.\d+(\.\d+)?$", str(meta.get("sdk_version"))):
        errors.append(f"sdk_version: {meta.get('sdk_version')!r} is not a version")
    for key in ("colorFrom", "colorTo"):
        if key in meta and meta[key] not in SPACE_COLOURS:
            errors.append(f"{key}: must be one of {sorted(SPACE_COLOURS)}")
    if "app_file" in meta and not str(meta["app_file"]).endswith(".py"):
        errors.append("app_file: must be a Python file")
    return errors


class FakeHub:
    """Repos live in `self.repos[(repo_type, repo_id)]`: {"private", "sdk", "branches": {name: {path: bytes}},
    "heads": {branch: commit sha}, "commits": [(branch, summary, sorted paths)]}; `self.requests` lists (method,
    path) in order."""

    def __init__(self, token: str, stall_on: str | None = None, page_size: int = 1000):
        """`stall_on`: a path fragment (e.g. "/commit/", "/resolve/"); a request whose path holds it is accepted and
        never answered, as by a stalled Hub, until the fake shuts down. `page_size`: models per page of
        `/api/models` (the Hub's is 1000; a small one makes the client follow the Link header)."""
        self.token = token
        self.stall_on = stall_on
        self.page_size = page_size
        self._release = threading.Event()
        self.repos = {}
        self.requests = []
        self.validated = []  # (repo type, README content) the client asked the Hub to validate
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _stalled(self, method: str, path: str) -> bool:
                if hub.stall_on is None or hub.stall_on not in path:
                    return False
                with hub._lock:
                    hub.requests.append((f"{method} (never answered)", path))
                hub._release.wait()
                return True

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = urlparse(self.path).path
                if self._stalled("POST", path):
                    return
                with hub._lock:
                    hub.requests.append(("POST", path))
                    status, answer = hub._handle(path, self.headers.get("Authorization"), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 404:
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()
                self.wfile.write(data)

            def _read(self, method: str):
                url = urlparse(self.path)
                if self._stalled(method, url.path):
                    return
                with hub._lock:
                    hub.requests.append((method, url.path))
                    status, headers, data = hub._handle_read(url.path, url.query, self.headers.get("Authorization"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if method == "GET":  # a HEAD answer carries the headers of the GET, not its body
                    self.wfile.write(data)

            def do_GET(self):
                self._read("GET")

            def do_HEAD(self):
                self._read("HEAD")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def files(self, repo_type: str, repo_id: str, branch: str = "main") -> dict:
        return self.repos[(repo_type, repo_id)]["branches"][branch]

    def _handle(self, path: str, authorization, body: bytes):
        if authorization != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/validate-yaml":
            payload = json.loads(body)
            self.validated.append((payload["repoType"], payload["content"]))
            errors = metadata_errors(payload["content"], payload["repoType"])
            return (400 if errors else 200), {"errors": [{"message": e} for e in errors], "warnings": []}
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_type == "space" and payload.get("sdk") not in ("gradio", "docker", "static"):
                return 400, {"error": "sdk is required for a Space"}
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = f"{self.url}/{prefix}{repo_id}"
            if (repo_type, repo_id) in self.repos:
                return 409, {"error": "You already created this repo", "url": url}
            self.repos[(repo_type, repo_id)] = {
                "private": payload.get("visibility") == "private",
                "sdk": payload.get("sdk"),
                "branches": {"main": {}},
                "heads": {"main": hashlib.sha1(f"initial commit of {repo_type} {repo_id}".encode()).hexdigest()},
                "commits": [],
            }
            return 200, {"url": url}
        match = REPO_ROUTE.match(path)
        if not match:
            return 404, {"error": f"no such route {path}"}
        plural, repo_id, action, revision = match.groups()
        repo = self.repos.get((plural[:-1], repo_id))
        if repo is None:
            return 404, {"error": "Repository not found"}
        branch = unquote(revision)
        if action == "branch":
            if branch in repo["branches"]:
                return 409, {"error": "Reference already exists"}
            repo["branches"][branch] = dict(repo["branches"]["main"])
            repo["heads"][branch] = repo["heads"]["main"]
            return 200, {}
        if branch not in repo["branches"]:
            return 404, {"error": f"Invalid rev id: {branch}"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "a commit starts with its header"}
        added = {}
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                return 400, {"error": f"unexpected commit operation {line['key']}"}
            added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        repo["branches"][branch].update(added)
        repo["commits"].append((branch, lines[0]["value"]["summary"], sorted(added)))
        oid = hashlib.sha1(json.dumps(sorted(added)).encode() + str(len(repo["commits"])).encode()).hexdigest()
        repo["heads"][branch] = oid
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _handle_read(self, path: str, query: str, authorization):
        """(status, headers, body) of a GET or HEAD: a file of a repo, or the list of models."""
        authorized = authorization == f"Bearer {self.token}"
        if authorization is not None and not authorized:
            return _json_answer(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/models":
            return self._list_models(parse_qs(query), authorized)
        match = RESOLVE_ROUTE.match(path)
        if not match:
            return 404, {}, b""
        plural, repo_id, revision, filename = match.groups()
        repo = self.repos.get((plural[:-1] if plural else "model", repo_id))
        if repo is None or (repo["private"] and not authorized):
            # The Hub answers 401 to an anonymous client and 404 to an authenticated one, for a repo that does not
            # exist as for one it may not see.
            return _json_answer(404 if authorized else 401, {"error": "Repository not found"}, "RepoNotFound")
        revision = unquote(revision)
        branch = next((b for b, sha in repo["heads"].items() if revision in (b, sha)), None)
        if branch is None:
            return _json_answer(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
        commit = {"X-Repo-Commit": repo["heads"][branch]}
        data = repo["branches"][branch].get(unquote(filename))
        if data is None:
            return _json_answer(404, {"error": "Entry not found"}, "EntryNotFound", commit)
        blob_sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what the Hub sends for a git file
        return 200, {**commit, "ETag": f'"{blob_sha}"', "Content-Type": "application/octet-stream"}, data

    def _list_models(self, params: dict, authorized: bool):
        """The Hub's model search: every `filter` must be one of a model's tags, `author` its namespace; `limit`
        caps the total, `cursor` (from the Link header) says where the page starts."""
        filters, author = params.get("filter", []), (params.get("author") or [None])[0]
        models = [
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "private": repo["private"],
                "tags": model_tags(repo["branches"]["main"]),
                "sha": repo["heads"]["main"],
            }
            for (repo_type, repo_id), repo in sorted(self.repos.items())
            if repo_type == "model" and (authorized or not repo["private"])
        ]
        models = [
            m
            for m in models
            if all(f in m["tags"] for f in filters) and (author is None or m["id"].split("/")[0] == author)
        ]
        if params.get("limit"):
            models = models[: int(params["limit"][0])]
        start = int((params.get("cursor") or ["0"])[0])
        page = models[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(models):
            following = {k: v for k, v in params.items() if k != "cursor"} | {"cursor": [str(start + self.page_size)]}
            headers["Link"] = f'<{self.url}/api/models?{urlencode(following, doseq=True)}>; rel="next"'
        return _json_answer(200, page, extra=headers)


def model_tags(files: dict) -> list:
    """A model's tags as the Hub derives them from its README's metadata: `tags`, the library, the pipeline tag,
    `license:X` and `dataset:X`."""
    readme = files.get("README.md")
    meta = _front_matter(readme.decode()) if readme is not None else None
    if not isinstance(meta, dict):
        return []
    tags = [meta["tags"]] if isinstance(meta.get("tags"), str) else list(meta.get("tags") or [])
    tags += [meta[key] for key in ("library_name", "pipeline_tag") if isinstance(meta.get(key), str)]
    if isinstance(meta.get("license"), str):
        tags.append(f"license:{meta['license']}")
    datasets = [meta["datasets"]] if isinstance(meta.get("datasets"), str) else meta.get("datasets") or []
    tags += [f"dataset:{d}" for d in datasets]
    return tags


def _json_answer(status: int, answer, error_code: str | None = None, extra: dict | None = None):
    headers = {"Content-Type": "application/json", **(extra or {})}
    if error_code is not None:
        headers["X-Error-Code"] = error_code
    return status, headers, json.dumps(answer).encode()
