"""`zscir serve`: composed search over HTTP (a JSON API and a web page), refined turn by turn.

    from zscir.serve import create_app
    app = create_app()                                  # the shapes world's gallery, the shipped FTI model
    app = create_app("my_index", "my_fti.safetensors")  # your index and model; mount it or run it with uvicorn

Names are imported on first use so that `zscir serve --help` stays fast.
"""

import importlib

_EXPORTS = {"create_app": "zscir.serve.app", "load_retrievers": "zscir.serve.app",
            "SearchService": "zscir.serve.service", "ServeConfig": "zscir.serve.service",
            "Reference": "zscir.serve.service", "RequestError": "zscir.serve.service"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zscir.serve' has no attribute {name!r}")
