"""gunicorn entry point: `gunicorn 'envoi.wsgi:get_app()'`. Reads the environment once."""

from __future__ import annotations

from envoi import runtime
from envoi.api.app import create_app
from envoi.infra import heap, memory
from envoi.infra.settings import Settings


def get_app():
    memory.release_large_buffers()  # each worker loads the app itself (no preload)
    settings = Settings.from_env()
    app = create_app(settings, runtime.build(settings))
    heap.settle_heap()  # the worker has started: its heap out of the cyclic collector (envoi.infra.heap)
    return app


def get_tracking_app():
    """`envoi tracking`: only the open/click/unsubscribe links, for the domains' tracking hosts."""
    memory.release_large_buffers()
    settings = Settings.from_env()
    app = create_app(settings, runtime.build(settings), tracking_only=True)
    heap.settle_heap()
    return app
