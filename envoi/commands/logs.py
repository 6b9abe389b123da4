"""`envoi logs [--follow]`: a domain's recent events or their live stream; `envoi logs purge`: event upkeep."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import click

VAR = Path("var")  # `envoi up` writes each region's demo.env under var/<region>/


def _demo_env() -> Path:
    import os

    return VAR / os.environ.get("ENVOI_REGION", "eu").lower() / "demo.env"

COLOURS = {"accepted": "cyan", "delivered": "green", "opened": "magenta", "clicked": "magenta",
           "unsubscribed": "yellow", "complained": "red", "rejected": "red", "stored": "blue"}


# SSE client -------------------------------------------------------------------------------------
class StreamError(Exception):
    """The server refused the stream (bad key, unknown domain, bad filter): reconnecting won't help."""


def _request(url: str, key: str, headers: dict | None = None) -> urllib.request.Request:
    auth = base64.b64encode(f"api:{key}".encode()).decode()
    return urllib.request.Request(url, headers={"Authorization": f"Basic {auth}", **(headers or {})})


def sse_events(url: str, key: str, *, last_event_id: str | None = None, timeout: float = 45.0,
               opened: Callable[[], None] | None = None,
               on_gap: Callable[[dict], None] | None = None) -> Iterator[tuple[str | None, dict | None]]:
    """One SSE connection: yields (last event id, event item) per event, and (id, None) when a
    keep-alive moves the position; a `gap` notice (events trimmed off the stream while away) goes
    to on_gap. Ends when the server ends the response."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    try:
        resp = urllib.request.urlopen(_request(url, key, headers), timeout=timeout)
    except urllib.error.HTTPError as ex:
        if ex.code in (429,) or ex.code >= 500:
            raise OSError(f"HTTP {ex.code}") from ex
        try:
            message = json.loads(ex.read()).get("message")
        except (ValueError, AttributeError):
            message = None
        raise StreamError(f"HTTP {ex.code}: {message or ex.reason}") from ex
    if opened is not None:
        opened()
    with resp:
        event_id, data, kind = last_event_id, [], "message"
        for raw in resp:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data and kind == "gap":
                    if on_gap is not None:
                        on_gap(json.loads("\n".join(data)))
                elif data:
                    yield event_id, json.loads("\n".join(data))
                elif event_id != last_event_id:
                    yield event_id, None
                last_event_id, data, kind = event_id, [], "message"
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
            elif name == "event":
                kind = value


def follow(url: str, key: str, on_event: Callable[[dict], None], *, last_event_id: str | None = None,
           stop: Callable[[], bool] = lambda: False, on_retry: Callable[[str], None] | None = None,
           on_gap: Callable[[dict], None] | None = None) -> None:
    """Read the stream for ever, reconnecting with Last-Event-ID when a response ends or breaks."""
    backoff = 0.5
    while not stop():
        try:
            for event_id, data in sse_events(url, key, last_event_id=last_event_id, on_gap=on_gap):
                last_event_id = event_id
                backoff = 0.5
                if data is not None:
                    on_event(data)
                if stop():
                    return
        except StreamError:
            raise
        except (OSError, ValueError) as ex:
            if on_retry:
                on_retry(f"stream interrupted ({ex}); reconnecting")
            time.sleep(backoff)
            backoff = min(backoff * 2, 10)


# formatting -------------------------------------------------------------------------------------
def format_event(data: dict, *, colour: bool = True) -> str:
    """One readable line per event: time, event, recipient, and what happened."""
    event = data.get("event", "?")
    severity = data.get("severity")
    stamp = datetime.fromtimestamp(float(data.get("timestamp") or 0)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    label = f"{event}/{severity}" if severity else event
    if event == "failed":
        tint = "red" if severity == "permanent" else "yellow"
    else:
        tint = COLOURS.get(event, "white")
    headers = (data.get("message") or {}).get("headers") or {}
    status = data.get("delivery-status") or {}
    parts = []
    if domain := (data.get("domain") or {}).get("name"):
        parts.append(f"[{domain}]")
    parts.append(data.get("recipient") or "-")
    if status.get("code") is not None:
        message = status.get("message") or ""
        enhanced = status.get("enhanced-code") or ""
        if enhanced and message.startswith(enhanced):
            enhanced = ""  # the reply text already starts with it
        reply = " ".join(str(x) for x in (status.get("code"), enhanced, message) if x != "").strip()
        parts.append(f"{reply[:80]}")
        where = [x for x in (status.get("mx-host"), "TLS" if status.get("tls") else None,
                             (data.get("envelope") or {}).get("sending-ip") or None) if x]
        if status.get("attempt-no"):
            where.append(f"attempt {status['attempt-no']}")
        if where:
            parts.append(f"({', '.join(where)})")
    if data.get("reason") and event == "failed":
        parts.append(f"reason={data['reason']}")
    subject = headers.get("subject")
    if subject:
        parts.append(f'"{subject[:60]}"')
    if headers.get("message-id"):
        parts.append(f"<{str(headers['message-id']).strip('<>')}>")
    head = f"{stamp} {label:<18}"
    if colour:
        head = click.style(stamp, dim=True) + " " + click.style(f"{label:<18}", fg=tint, bold=True)
    return f"{head} {' '.join(parts)}"


# commands ---------------------------------------------------------------------------------------
def _read_env_file(path: Path) -> dict:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _connection(api_url: str | None, api_key: str | None) -> tuple[str, str]:
    demo = _read_env_file(_demo_env())
    url = (api_url or demo.get("ENVOI_API_URL") or "http://127.0.0.1:8025").rstrip("/")
    key = api_key or demo.get("ENVOI_API_KEY")
    if not key:
        raise click.UsageError("no API key: pass --api-key or set ENVOI_API_KEY (var/<region>/demo.env has one after `envoi up`)")
    return url, key


def _filters(event: tuple[str, ...], recipient: str | None) -> dict:
    query: dict = {}
    if event:
        query["event"] = " OR ".join(event)
    if recipient:
        query["recipient"] = recipient
    return query


@click.group("logs", invoke_without_command=True, short_help="Show a domain's recent events, or --follow them live.")
@click.option("-f", "--follow", is_flag=True, help="Stream events live as they happen (SSE).")
@click.option("--domain", default=None, help="Only this domain (default: every domain of the account when following).")
@click.option("--event", multiple=True, help="Only these event types (repeatable), e.g. --event failed.")
@click.option("--recipient", default=None, help="Only this recipient.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 300),
              help="Without --follow: how many recent events to show.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
@click.option("--api-url", envvar="ENVOI_API_URL", default=None, help="API base URL [env ENVOI_API_URL].")
@click.option("--api-key", envvar="ENVOI_API_KEY", default=None, help="API key [env ENVOI_API_KEY].")
@click.pass_context
def logs(ctx, follow: bool, domain: str | None, event: tuple[str, ...], recipient: str | None, limit: int,
         as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """Show delivery logs: recent events of a domain, or --follow them live."""
    if ctx.invoked_subcommand is not None:
        return
    url, key = _connection(api_url, api_key)
    colour = not as_json

    def show(data: dict) -> None:
        click.echo(json.dumps(data) if as_json else format_event(data, colour=colour), color=colour or None)

    query = urllib.parse.urlencode(_filters(event, recipient))
    if not follow:
        if not domain:
            raise click.UsageError("--domain is required without --follow")
        request = f"{url}/v3/{urllib.parse.quote(domain)}/events?{query}&limit={limit}"
        try:
            with urllib.request.urlopen(_request(request, key), timeout=30) as resp:
                items = json.loads(resp.read())["items"]
        except urllib.error.HTTPError as ex:
            raise click.ClickException(f"HTTP {ex.code}: {ex.read().decode(errors='replace')}") from ex
        for data in reversed(items):
            show(data)
        return
    path = f"/v3/{urllib.parse.quote(domain)}/events/live" if domain else "/v3/events/live"
    stream_url = f"{url}{path}" + (f"?{query}" if query else "")
    click.echo(click.style(f"following {domain or 'all domains'} at {url} (Ctrl-C to stop)", dim=True), err=True)
    try:
        follow_stream(stream_url, key, show)
    except StreamError as ex:
        raise click.ClickException(str(ex)) from ex
    except KeyboardInterrupt:
        pass


def follow_stream(url: str, key: str, show: Callable[[dict], None]) -> None:
    def gap(notice: dict) -> None:
        window = f"{datetime.fromtimestamp(notice['begin']):%H:%M:%S}-{datetime.fromtimestamp(notice['end']):%H:%M:%S}"
        click.echo(click.style(f"some events of {window} were missed while reconnecting; "
                               "`envoi logs --domain D` (events API) has them", fg="yellow"), err=True)

    follow(url, key, show, on_retry=lambda msg: click.echo(click.style(msg, dim=True), err=True), on_gap=gap)


@logs.command("purge")
@click.option("--every", default=0.0, type=float, help="Repeat every N seconds (0: once).")
def purge(every: float) -> None:
    """Partition upkeep and retention: create upcoming partitions, drop and delete expired events."""
    from envoi import runtime
    from envoi.infra.settings import Settings

    services = runtime.build(Settings.from_env(), pool_size=2)
    try:
        while True:
            report = services.events.maintain()
            services.stats.fold()
            click.echo(f"partitions created: {', '.join(report['created']) or '-'}; "
                       f"dropped: {', '.join(report['dropped']) or '-'}; rows deleted: {report['deleted']}")
            if every <= 0:
                return
            time.sleep(every)
    finally:
        services.close()


COMMANDS: list = [logs]  # click commands/groups added to `envoi`
