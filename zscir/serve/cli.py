"""`zscir serve`: a thin shell over :func:`zscir.serve.create_app` and :func:`zscir.serve.runner.serve`."""

from __future__ import annotations

import json
import re

import click

from zscir.backbone.options import backbone_options, itm_rerank_option
from zscir.data.images import DEFAULT_MAX_PIXELS
from zscir.errors import ZscirError
from zscir.generation.cli import captioner_option, editor_option, generations_option
from zscir.importers.released_generations import load_generations
from zscir.resolve import GenerationSources
from zscir.serve.app import create_app, load_retrievers
from zscir.serve.auth import check_bind
from zscir.serve.request_log import LOG_FORMATS, configure_logging
from zscir.serve.limits_cli import limit_options
from zscir.serve.runner import bind, serve as run
from zscir.serve.service import ServeConfig


@click.command("serve")
@click.option("--index", "index_dir", type=click.Path(), help="Index directory (default: the shapes world's gallery).")
@click.option("--model", "models", multiple=True,
              help="A zscir checkpoint, a baseline (image | text | sum) or a language-model method (cirevl | ldre | "
                   "seize | cvsi:MAPPING, reading --generations, else --captioner/--editor); repeat to load several "
                   "(a request picks one by name). Default: the index's model, else the shipped FTI checkpoint.")
@generations_option
@captioner_option(note="cirevl/ldre/seize/cvsi: caption an uploaded reference (cached; its time is in the timings).")
@editor_option(note="cirevl/ldre/seize/cvsi: edit a caption the --generations lack (cached).")
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
@click.option("--access-log", is_flag=True, help="One log line per request (method, path, status, ms, request id).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="json: every log line (access log included) as one JSON object with its request id.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="An origin (https://app.example.com) whose pages may call the API; repeat for several; "
                   "'*' for any. Default: none (same-origin only).")
@click.option("--show-paths", is_flag=True,
              help="Show the images' absolute server paths in results and the index folder in /healthz "
                   "(hidden by default).")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Queries in one POST /search/batch.")
@click.option("--dedupe-threshold", type=float, default=0.95, show_default=True,
              help="Cosine at or above which a request's \"dedupe\": true drops a hit as a near duplicate of a "
                   "higher one.")
@itm_rerank_option("Composed queries; scores stay the first stage's; /healthz records it per model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line (url, models, index) once serving.")
@click.option("--no-progress", is_flag=True, help="No progress bars (when the world's index is built on first use).")
@limit_options
def serve(index_dir, models, generations, captioner, editor, clip, pretrained, preprocess, device, host, port, api_key,
          insecure_no_auth, workers, threads, max_upload_mb, max_pixels, max_k, max_sessions, reload_interval,
          graceful_timeout, log_level, access_log, log_format, cors_origins, show_paths, max_batch, dedupe_threshold,
          itm_rerank, as_json, no_progress, limits):
    """Serve composed search over HTTP: a JSON API (schema at /openapi.json) and a web page at /."""
    check_bind(host, api_key, insecure_no_auth)
    for name, value, low in (("--workers", workers, 1), ("--max-k", max_k, 1), ("--port", port, 0),
                             ("--max-sessions", max_sessions, 1), ("--max-batch", max_batch, 1)):
        if value < low:
            raise ZscirError(f"option {name} must be at least {low}, got {value}")
    if not 0.0 < dedupe_threshold <= 1.0:
        raise ZscirError(f"option --dedupe-threshold must be in (0, 1], got {dedupe_threshold}")
    for origin in cors_origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ZscirError(f"option --cors-origin: expected '*' or scheme://host[:port] with no path, got {origin!r}")
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
    sources = None
    if generations or captioner or editor:
        sources = GenerationSources(load_generations(generations) if generations else None, captioner, editor)
    retrievers = load_retrievers(index_dir, models, clip, pretrained, preprocess, device, progress=not no_progress,
                                 generations=sources, itm_rerank=itm_rerank)
    config = ServeConfig(max_upload_bytes=int(max_upload_mb * 2 ** 20), max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                         max_k=max_k, workers=workers, reload_interval=reload_interval, max_sessions=max_sessions,
                         api_key=api_key or None, show_paths=show_paths, max_batch=max_batch,
                         dedupe_threshold=dedupe_threshold, cors_origins=tuple(cors_origins), access_log=access_log)
    log_config = configure_logging(log_format, log_level)
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
        access_log=False, log_config=log_config)  # our access log (zscir.serve.request_log) has the request id
