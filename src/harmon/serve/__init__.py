"""``harmon serve``: a web page and an OpenAI-compatible HTTP API over one pipeline.

Needs the ``serve`` extra (Starlette and uvicorn): ``pip install 'harmon[serve]'``. :func:`create_app` builds the
ASGI app (:mod:`harmon.serve.app`); :class:`ServeLimits` holds what a request may ask for; the model runs on one
worker thread (:mod:`harmon.serve.worker`).
"""

from __future__ import annotations

from harmon.serve.limits import ServeLimits

__all__ = ["ServeLimits", "create_app"]


def create_app(pipe, limits: ServeLimits | None = None, model_id: str = "harmon"):
    """The ASGI app serving ``pipe`` (see :func:`harmon.serve.app.create_app`)."""
    from harmon.serve.app import create_app as build

    return build(pipe, limits, model_id)
