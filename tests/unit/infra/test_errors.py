"""Errors are mapped once, by class: every error a package raises to a caller derives from EnvoiError
and says its HTTP status and SMTP reply; it lives in its package's `errors` module; and no package
imports another's errors to translate them (only the edges that map them may)."""

from __future__ import annotations

import importlib
import pkgutil
import re

import grimp
import psycopg
import pytest

import envoi
from envoi.infra.db import DatabaseUnavailable, DataError, NoConnection, Unavailable
from envoi.infra.errors import EnvoiError, ServiceUnavailable
from envoi.infra.group_commit import CommitTimeout
from envoi.ips.errors import IpNotAllowed
from envoi.mta.errors import DomainNotFound, MessageTooLarge
from envoi.mta.submission.server import DB_TEMPFAIL

#: Where an error class may live besides a package's `errors` module: the database's own, which must
#: also be the driver's classes (envoi.infra.db), and the group commit's timeout.
INFRA_HOMES = {"envoi.infra.db", "envoi.infra.group_commit"}
#: Modules that may import a package's errors: the edges that map them (HTTP, SMTP), and the
#: commands above every package that run a package and report its errors.
EDGES = ("envoi.api", "envoi.mta.submission.server", "envoi.mta.bounces.inbound", "envoi.cli", "envoi.commands",
         "envoi.dev")
ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")  # RFC 3463 class.subject.detail


def _all_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(envoi.__path__, "envoi.")]
    return [name for name in names if ".migrations." not in name and name not in ("envoi.wsgi",)]


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


@pytest.fixture(scope="module")
def error_classes() -> list[type[EnvoiError]]:
    for name in _all_modules():
        importlib.import_module(name)
    classes = sorted(_subclasses(EnvoiError), key=lambda c: f"{c.__module__}.{c.__qualname__}")
    assert len(classes) > 20  # every package's errors were found
    return classes


def test_every_error_class_has_a_sane_http_status_and_a_consistent_smtp_reply(error_classes):
    for cls in error_classes:
        name = f"{cls.__module__}.{cls.__qualname__}"
        assert 400 <= cls.http_status <= 599, name
        assert 400 <= cls.smtp_code <= 599, name
        match = ENHANCED.match(cls.smtp_enhanced)
        assert match and match.group(1) == str(cls.smtp_code)[0], name  # 4xx <-> 4.x.x, 5xx <-> 5.x.x
        if cls.http_status >= 500:  # the server's trouble, not the request's: an SMTP client retries
            assert cls.smtp_code < 500, name
        if cls.retry_after is not None:
            assert cls.http_status in (429, 503), name


def test_every_error_class_lives_in_its_packages_errors_module(error_classes):
    for cls in error_classes:
        assert cls.__module__.endswith(".errors") or cls.__module__ in INFRA_HOMES, cls


def test_no_package_imports_another_packages_errors():
    graph = grimp.build_graph("envoi")
    borrowed = []
    for module in sorted(graph.modules):
        if module.startswith(EDGES) or module.count(".") < 1:
            continue
        package = module.split(".")[1]
        for imported in graph.find_modules_directly_imported_by(module):
            parts = imported.split(".")
            if parts[-1] == "errors" and parts[1] not in (package, "infra"):  # the base is everyone's
                borrowed.append(f"{module} -> {imported}")
    assert borrowed == []


def test_the_smtp_reply_is_code_enhanced_code_and_one_line_of_the_message():
    assert DomainNotFound("Domain not found: a.test").smtp_reply() == "550 5.7.1 Domain not found: a.test"
    assert MessageTooLarge("too\r\nbig\n").smtp_reply() == "552 5.3.4 too big "
    assert IpNotAllowed("x" * 1000).smtp_reply() == "550 5.7.1 " + "x" * 400  # under SMTP's 512-octet line
    error = IpNotAllowed("no such pool")
    assert (error.http_status, error.message, str(error)) == (403, "no such pool", "no such pool")
    with pytest.raises(TypeError):
        IpNotAllowed()  # a caller is always told why


def test_a_database_outage_is_a_temporary_failure_at_both_edges_and_still_the_drivers_error():
    for error in (DatabaseUnavailable("connection refused"), NoConnection("couldn't get a connection"),
                  Unavailable("the database did not answer within 2 s"), CommitTimeout("not written within 2 s")):
        assert isinstance(error, ServiceUnavailable)
        assert (error.http_status, error.retry_after, error.message) == (503, 5, ServiceUnavailable.message)
        assert error.smtp_reply() == DB_TEMPFAIL and DB_TEMPFAIL.startswith("451 4.3.0 ")
        assert str(error) != error.message  # the cause, for logs and the CLI; never shown to a caller
    assert isinstance(DatabaseUnavailable("x"), psycopg.OperationalError)
    assert isinstance(CommitTimeout("x"), TimeoutError)
    refused = DataError("invalid byte sequence for encoding \"UTF8\": 0x00")
    assert isinstance(refused, psycopg.DataError) and refused.http_status == 400
    assert refused.message == "a parameter value is invalid or out of range" and "0x00" in str(refused)
