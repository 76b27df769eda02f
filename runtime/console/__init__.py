"""The web console (``/console``) and the API reference (``/docs``), served by the gateway.

The console is a client of the public HTTP API and nothing more: its pages are static
HTML, and a little JavaScript of ours (``static/*.js``) calls ``/v1/...`` with the API
key or admin token the user typed, kept in the tab's ``sessionStorage``. So the gateway
only serves files here: the pages (``pages/*.html``, with their asset URLs and the
operator view's Grafana links filled in once at start-up) and the assets, ours and the
vendored ones (``static/vendor/``, re-vendored by ``vendor.sh`` at pinned versions).

Asset URLs carry a hash of the file's bytes (``?v=…``): a URL with the current hash is
cached for a year (``immutable``); any other request for the file is revalidated with
its ETag (a module imported by a relative URL, an old page after an upgrade).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from runtime.config import JoblineConfig

PAGES = ("studio", "history", "operator")  # /console/<page>

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PAGE_DIR = HERE / "pages"
DASHBOARDS = HERE.parent.parent / "dashboards"  # Grafana JSON, next to runtime/ in the repo
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
CONTENT_TYPES = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Pages load only our own files; outputs are shown from blob: URLs (fetched with the key).
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_DOCS_CSP = _CSP + "; style-src 'self' 'unsafe-inline'"  # Swagger UI sets inline styles
_PLACEHOLDER = re.compile(r"\{\{(asset|data):([A-Za-z0-9_./-]+)\}\}")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # also the ?v= of its URL


def load_assets(root: Path = STATIC) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it (``vendor/x.css``)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:16]
            assets[path.relative_to(root).as_posix()] = Asset(body, content_type, digest)
    return assets


def dashboards(grafana_url: str, directory: Path = DASHBOARDS) -> list[dict[str, str]]:
    """The Grafana dashboards of ``directory`` as ``{title, uid, url}`` (url empty: no Grafana)."""
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            document = json.loads(path.read_text())
            uid, title = str(document["uid"]), str(document["title"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        url = f"{grafana_url}/d/{uid}" if grafana_url else ""
        found.append({"title": title, "uid": uid, "file": f"dashboards/{path.name}", "url": url})
    return found


class Console:
    """The console's routes: pages, assets, ``/docs``; everything read once, at start."""

    def __init__(self, config: JoblineConfig) -> None:
        self.assets = load_assets()
        data = {
            "grafana_url": config.console.grafana_url,
            "dashboards": json.dumps(dashboards(config.console.grafana_url)),
        }
        self.pages = {
            name: self._render((PAGE_DIR / f"{name}.html").read_text(), data).encode()
            for name in (*PAGES, "docs")
        }

    def _render(self, template: str, data: dict[str, str]) -> str:
        def fill(match: re.Match[str]) -> str:
            kind, name = match.groups()
            if kind == "asset":
                return f"/console/assets/{name}?v={self.assets[name].etag}"
            return html.escape(data[name], quote=True)

        page = _PLACEHOLDER.sub(fill, template)
        if "{{" in page:  # a placeholder the pattern missed would ship as a broken URL
            raise ValueError(
                f"unfilled placeholder in a console page: {page[page.index('{{') :][:60]}"
            )
        return page

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/console", self.index, allow_head=False),
            *(web.get(f"/console/{page}", self.page, allow_head=False) for page in PAGES),
            web.get("/console/assets/{name:.+}", self.asset, allow_head=False),
            web.get("/docs", self.page, allow_head=False),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/console/studio"})

    async def page(self, request: web.Request) -> web.Response:
        name = request.path.rstrip("/").rsplit("/", 1)[-1]
        return web.Response(
            body=self.pages[name],
            content_type="text/html",
            charset="utf-8",
            headers={
                **_SECURITY_HEADERS,
                "Cache-Control": REVALIDATE,
                "Content-Security-Policy": _DOCS_CSP if name == "docs" else _CSP,
            },
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = self.assets.get(name)
        if asset is None:
            message = f"no console asset {name[:100]!r}"
            error = {"error": {"code": "not_found", "message": message}}
            return web.json_response(error, status=404)
        etag = f'"{asset.etag}"'
        headers = {
            **_SECURITY_HEADERS,
            "ETag": etag,
            "Cache-Control": IMMUTABLE if request.query.get("v") == asset.etag else REVALIDATE,
        }
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
        )


def console_routes(config: JoblineConfig) -> list[web.RouteDef]:
    """The routes of ``/console`` and ``/docs`` (no auth: the pages hold no data)."""
    return Console(config).routes()
