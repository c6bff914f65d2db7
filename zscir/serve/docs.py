"""The API's /docs page, offline: Swagger UI from the ``swagger-ui-bundle`` package, served by the app itself.

No CDN: the page, its script and its stylesheet come from this server; the page reads the schema at
``openapi.json`` beside it. Links are relative, so the page works when the app is mounted under a prefix.
The start-up script is a file, not inline, so a Content-Security-Policy of ``script-src 'self'`` allows it.
"""

from __future__ import annotations

from swagger_ui_bundle import swagger_ui_path

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
          "swagger-ui.css": "text/css; charset=utf-8"}

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>zscir API</title><link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script><script src="docs/init.js"></script></body>
</html>
"""

INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                               presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
};
"""


def asset(name: str) -> bytes | None:
    """The named Swagger UI file's bytes (init.js is ours), or None for any other name."""
    if name == "init.js":
        return INIT.encode()
    if name not in ASSETS:
        return None
    return (swagger_ui_path / name).read_bytes()


def media_type(name: str) -> str:
    return ASSETS.get(name, "text/javascript; charset=utf-8")
