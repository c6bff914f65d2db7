"""The options of `zscir serve` that set its limits (:class:`zscir.serve.limits.Limits`), as one decorator.

    @limit_options
    def serve(..., limits): ...     # the command receives one checked Limits object
"""

from __future__ import annotations

import functools

import click

from zscir.serve.limits import Limits

_DEFAULT = Limits()

OPTIONS = (
    click.option("--max-queue", type=int, default=_DEFAULT.max_queue, show_default=True,
                 help="Search requests (POST) held beyond the --workers being answered, bodies included; "
                      "more are answered 503 with Retry-After."),
    click.option("--rate-limit", type=float, default=_DEFAULT.rate, show_default=True,
                 help="Search requests per second per client address (0: no limit); over it, 429 with Retry-After."),
    click.option("--rate-burst", type=int, default=_DEFAULT.burst, show_default=True,
                 help="Search requests a client may send at once before --rate-limit applies."),
    click.option("--header-timeout", type=float, default=_DEFAULT.header_timeout, show_default=True,
                 help="Seconds for a request's line and headers to arrive; else 408 and the connection is closed."),
    click.option("--body-timeout", type=float, default=_DEFAULT.body_timeout, show_default=True,
                 help="Seconds for a request's whole body to arrive; else 408 and the connection is closed."),
    click.option("--max-connections", type=int, default=_DEFAULT.max_connections, show_default=True,
                 help="Open connections; one more is closed at once."),
)


def limit_options(command):
    """Add the limit options to ``command``, which gets them as ``limits=Limits(...)`` (checked)."""

    @functools.wraps(command)
    def wrapper(*args, max_queue, rate_limit, rate_burst, header_timeout, body_timeout, max_connections, **kwargs):
        limits = Limits(max_queue=max_queue, rate=rate_limit, burst=rate_burst, header_timeout=header_timeout,
                        body_timeout=body_timeout, max_connections=max_connections).check()
        return command(*args, limits=limits, **kwargs)

    for option in reversed(OPTIONS):
        wrapper = option(wrapper)
    return wrapper
