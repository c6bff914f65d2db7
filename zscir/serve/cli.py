"""`zscir serve`: a thin shell over :func:`zscir.serve.create_app` and :func:`zscir.serve.runner.serve`."""

from __future__ import annotations

import json

import click

from zscir.backbone.options import backbone_options
from zscir.data.images import DEFAULT_MAX_PIXELS
from zscir.errors import ZscirError
from zscir.serve.app import create_app, load_retrievers
from zscir.serve.auth import check_bind
from zscir.serve.limits_cli import limit_options
from zscir.serve.runner import bind, serve as run
from zscir.serve.service import ServeConfig


@click.command("serve")
@click.option("--index", "index_dir", type=click.Path(), help="Index directory (default: the shapes world's gallery).")
@click.option("--model", "models", multiple=True,
              help="A zscir checkpoint or a baseline (image | text | sum); repeat to load several "
                   "(a request picks one by name). Default: the index's model, else the shipped FTI checkpoint.")
@backbone_options("For a baseline --model without --index.", random_weights=True, preprocess=None,
                  preprocess_note="With --clip; default: targetpad.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs --api-key or --insecure-no-auth.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: a free one).")
@click.option("--api-key", envvar="ZSCIR_API_KEY", help="Require this key on every request "
              "(X-API-Key, Authorization: Bearer, or a browser's login prompt as the password). Env: ZSCIR_API_KEY.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Searches answered at once: threads sharing the one model load.")
@click.option("--threads", type=int, default=None, help="torch threads per search (default: torch's own choice).")
@click.option("--max-upload-mb", type=float, default=10.0, show_default=True, help="Largest reference upload.")
@click.option("--max-pixels", type=int, default=None,
              help="Largest reference image in pixels (zscir's own decompression-bomb limit, any value; "
                   f"default: {DEFAULT_MAX_PIXELS}).")
@click.option("--max-k", type=int, default=100, show_default=True, help="Largest k a request may ask for.")
@click.option("--max-sessions", type=int, default=1000, show_default=True,
              help="Refinement sessions kept in memory (the least recently used are dropped).")
@click.option("--reload-interval", type=float, default=2.0, show_default=True,
              help="Seconds between checks for a new index generation written by `zscir index` (0: never).")
@click.option("--graceful-timeout", type=float, default=10.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds to let running requests finish.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line (url, models, index) once serving.")
@click.option("--no-progress", is_flag=True, help="No progress bars (when the world's index is built on first use).")
@limit_options
def serve(index_dir, models, clip, pretrained, preprocess, device, host, port, api_key, insecure_no_auth, workers,
          threads, max_upload_mb, max_pixels, max_k, max_sessions, reload_interval, graceful_timeout, log_level,
          access_log, as_json, no_progress, limits):
    """Serve composed search over HTTP: a JSON API (schema at /openapi.json) and a web page at /."""
    check_bind(host, api_key, insecure_no_auth)
    for name, value, low in (("--workers", workers, 1), ("--max-k", max_k, 1), ("--port", port, 0),
                             ("--max-sessions", max_sessions, 1)):
        if value < low:
            raise ZscirError(f"option {name} must be at least {low}, got {value}")
    if threads is not None and threads < 1:
        raise ZscirError(f"option --threads must be at least 1, got {threads}")
    if not max_upload_mb > 0:
        raise ZscirError(f"option --max-upload-mb must be positive, got {max_upload_mb}")
    if max_pixels is not None and max_pixels < 1:
        raise ZscirError(f"option --max-pixels must be at least 1, got {max_pixels}")
    if threads is not None:
        import torch  # deferred: heavy

        torch.set_num_threads(threads)

    bind(host, port).close()  # a taken port is reported before the models load
    retrievers = load_retrievers(index_dir, models, clip, pretrained, preprocess, device, progress=not no_progress)
    config = ServeConfig(max_upload_bytes=int(max_upload_mb * 2 ** 20), max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         max_k=max_k, workers=workers, reload_interval=reload_interval, max_sessions=max_sessions,
                         api_key=api_key or None)
    app = create_app(retrievers=retrievers, config=config, limits=limits)
    service = app.state.service

    def ready(url):
        info = {"url": url, "models": list(service.encoders), "index": str(service.root),
                "images": len(service.state.index), "auth": bool(api_key)}
        if as_json:
            click.echo(json.dumps(info), nl=True)
        else:
            click.echo(f"serving {info['images']} images from {info['index']} with {', '.join(info['models'])} "
                       f"at {url}/  (API schema: {url}/openapi.json; Ctrl-C stops)", err=True)

    run(app, host, port, on_ready=ready, log_level=log_level, graceful_timeout=graceful_timeout,
        access_log=access_log)
