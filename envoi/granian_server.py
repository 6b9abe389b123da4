"""`envoi api` and `envoi tracking` served by granian (ENVOI_API_SERVER=granian), as gunicorn serves them.

Granian is a Rust HTTP server: connections, HTTP parsing and response writing happen in Rust threads
without the GIL, and the WSGI app runs on a pool of Python threads per worker. Against gunicorn's
gthread workers that is about a fifth of the CPU per request outside the app (bench/http_server_overhead.py).

What gunicorn's settings (envoi.gunicorn_conf) give, kept here:
* this process is the master: it serves the workers' summed metrics, /healthz and /readyz on the metrics
  bind (ready when its stores answer and every worker has loaded the app); a dead worker's live gauges
  are dropped at the next scrape; a directory it made is removed at exit;
* SIGTERM: workers stop accepting, finish the requests in flight, and are killed after 1 s (gone
  within 2 s); SIGHUP: the workers are replaced one by one, each new one before its old one stops;
* a worker that dies is started again; workers' and granian's own logs as ENVOI_LOG_FORMAT says;
* TLS from one certificate (`envoi tracking`); granian cannot pick one by SNI, so the caller refuses
  ENVOI_TRACKING_TLS_DIR;
* a request's environ holds only the request (granian adds the process's environment variables);
* a cut body is never read as a whole one: a urlencoded form must come with its Content-Length.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import re
from pathlib import Path

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import Server

from envoi.infra import metrics_dir, process_group
from envoi.infra.metrics import GroupCollector, forget_process, serve

# granian's loggers go to the root logger, which the command set up as text or JSON
_LOGS = {"loggers": {"_granian": {"handlers": [], "propagate": True},
                     "granian.access": {"handlers": [], "propagate": True}}}
_LIVE_FILE = re.compile(r"_(\d+)\.db$")


def serve_app(target: str, host: str, port: int, workers: int, threads: int, access_log: bool,
              metrics_bind: str, readiness, tls: tuple[str, str] | None = None) -> None:
    """Serve the WSGI app factory `target` ("module:function") until SIGTERM. `readiness(children)`: the
    master's Health (envoi.infra.health) given the check of its workers."""
    server = Server(
        target, address=host, port=port, interface=Interfaces.WSGI, factory=True, workers=workers,
        # Python threads per worker calling the app; requests past them wait in granian (a live event
        # stream holds one, as it holds a gthread thread).
        blocking_threads=threads, http=HTTPModes.http1, websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=30_000),
        log_level=LogLevels.warning, log_dictconfig=_LOGS, log_access=access_log,
        ssl_cert=Path(tls[0]) if tls else None, ssl_key=Path(tls[1]) if tls else None, ssl_protocol_min=SSLProtocols.tls12,
        respawn_failed_workers=True, respawn_interval=1.0, workers_kill_timeout=1,
    )
    # Forked workers leave with os._exit once their requests are done, as gunicorn's do: a spawned one
    # exits the interpreter's way, waiting for the app's threads (pools, the doorbell), and was killed
    # after the 1 s grace instead (Python 3.14's default, forkserver, granian treats as spawn).
    multiprocessing.set_start_method("fork", force=True)
    # Before any worker is forked (they inherit the variable): each worker's app says there it is ready.
    ready = process_group.ReadyDir()

    def children() -> None:
        """The group is ready when all its workers run and have loaded the app (gunicorn_conf.when_ready's
        check); a dead one counts until granian has started its replacement."""
        live = [worker.inner.pid for worker in list(server.wrks) if worker.is_alive()]
        process_group.check_children(ready.path, live, server.workers)

    def status() -> tuple[int, int, None]:  # granian replaces its workers; it is not counted here
        live = [worker.inner.pid for worker in list(server.wrks) if worker.is_alive()]
        return process_group.count_ready(ready.path, live), server.workers, None

    if metrics_bind:
        directory = os.environ[metrics_dir.VARIABLE]
        from envoi.gunicorn_conf import PROCESS  # the process's name, set by the launcher (envoi.cli)

        group = GroupCollector(os.environ.get(PROCESS, "api"), status)
        server.on_startup(lambda: serve(metrics_bind, lambda: _render(directory, group), readiness(children)))
    server.on_shutdown(metrics_dir.release)
    server.on_shutdown(ready.close)
    server.serve()


def api():
    """The app factory of a worker: its logs as ENVOI_LOG_FORMAT says, then the app (envoi.wsgi)."""
    return _app("get_app")


def tracking():
    return _app("get_tracking_app")


def _app(factory: str):
    import logging

    from envoi import wsgi
    from envoi.gunicorn_conf import PROCESS
    from envoi.infra import log_format
    from envoi.infra.settings import log_format as chosen_format

    log_format.configure(logging.INFO, chosen_format(os.environ), os.environ.get(PROCESS, "api"))
    return without_process_environment(forms_with_a_length(getattr(wsgi, factory)()))


_LENGTH_REQUIRED = b'{"message": "send a urlencoded form with its Content-Length (not chunked)"}'


def forms_with_a_length(app):
    """Refuse (411) a urlencoded form sent chunked. granian ends a chunked body cut off mid-way (the client
    gone) or badly framed as if it were whole, and a form has no end marker: what came would be read as a
    shorter message and sent (gunicorn raises instead). A Content-Length lets the app see the cut
    (envoi.api.forms); a multipart body ends with its closing boundary and JSON with its syntax, so those
    may come chunked."""
    def application(environ, start_response):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            ctype = environ.get("CONTENT_TYPE", "").lower()
            if not ctype or ctype.startswith("application/x-www-form-urlencoded"):
                start_response("411 Length Required", [("Content-Type", "application/json"),
                                                       ("Content-Length", str(len(_LENGTH_REQUIRED)))])
                return [_LENGTH_REQUIRED]
        return app(environ, start_response)

    return application


# What a WSGI server itself puts in a request's environ: a variable of the process by one of these names
# is not removed (the request's value has replaced it).
_REQUEST_KEYS = frozenset({"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
                           "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
                           "REMOTE_PORT", "GATEWAY_INTERFACE", "SERVER_SOFTWARE", "RAW_URI"})


def without_process_environment(app):
    """granian starts every request's environ from a copy of os.environ (its WSGI wrapper): the secret key,
    the database URL and every other variable sat in each request, where an error report or a debug dump of
    the environ would show them; gunicorn gives only the request's. Remove them again (~1 µs a request).
    HTTP_* variables of the process are left alone: removing one could remove a header the client sent."""
    leaked = tuple(key for key in os.environ if key not in _REQUEST_KEYS and not key.startswith("HTTP_"))

    def application(environ, start_response):
        for key in leaked:
            environ.pop(key, None)
        return app(environ, start_response)

    return application


def _render(directory: str, group: GroupCollector | None = None) -> bytes:
    from envoi.infra.metrics import render_directory

    forget_dead_workers(directory)
    return render_directory(directory, group)


def forget_dead_workers(directory: str) -> None:
    """granian tells no one a worker exited (gunicorn's child_exit): drop the live gauges of every process
    whose files are here and that no longer runs."""
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(directory, "gauge_live*_*.db"))
            if (m := _LIVE_FILE.search(f))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            forget_process(pid)
        except PermissionError:  # alive, another user's
            pass
