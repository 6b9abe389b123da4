"""What the administration commands share: the region's services for one command, and who is acting."""

from __future__ import annotations

import functools
import getpass

import click


def services(pool_size: int = 2):
    """The region's services, built from the environment's settings and closed when the command ends
    (errors or not: a pool left to the garbage collector warns)."""
    from envoi import runtime
    from envoi.infra.settings import Settings

    built = runtime.build(Settings.from_env(), pool_size=pool_size)
    click.get_current_context().call_on_close(built.close)
    return built


def with_services(fn):
    """Decorator: the command receives the region's services as its first argument (its errors become
    one line at the CLI edge, envoi.cli)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(services(), *args, **kwargs)

    return wrapper


def actor() -> str:
    """The audit actor of a command: cli:<login name>."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (containers)
        return "cli:unknown"
