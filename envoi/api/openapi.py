"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

It is the source for docs/api.md (`python -m envoi.api.openapi --markdown`). A test checks that
every route of the falcon app is described here and that nothing else is, so it cannot drift; the
adversarial suite fuzzes the app from it (schemathesis) and checks the responses against it.
"""

from __future__ import annotations

import copy
import json
import sys

import falcon

from envoi.api.auth import PUBLIC

# schemas -------------------------------------------------------------------------------------------
STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
OBJ = {"type": "object"}
YESNO = {"type": "string", "enum": ["yes", "no", "true", "false"]}
ERROR = {"type": "object", "required": ["message"], "properties": {"message": STR}}
MESSAGE = ERROR  # {"message": "..."} is also the shape of most successes
LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}}
PAGED = {"type": "object", "required": ["items", "paging"],
         "properties": {"items": {"type": "array", "items": OBJ}, "paging": OBJ}}
DOMAIN = {"type": "object", "required": ["id", "name", "state"],
          "properties": {"id": STR, "name": STR, "state": STR, "type": STR, "is_disabled": BOOL,
                         "created_at": STR, "smtp_login": STR, "spam_action": STR, "wildcard": BOOL,
                         "web_prefix": STR, "web_scheme": STR, "require_tls": BOOL, "skip_verification": BOOL,
                         "ip_overflow": {"type": "string", "enum": ["overflow", "wait", "default"]}}}
DNS_RECORDS = {"sending_dns_records": {"type": "array", "items": OBJ},
               "receiving_dns_records": {"type": "array", "items": OBJ}}
QUEUED = {"type": "object", "required": ["id", "message"], "properties": {"id": STR, "message": STR}}
IP = {"type": "object", "required": ["ip"], "properties": {"ip": STR, "dedicated": BOOL, "rdns": STR}}
POOL = {"type": "object", "required": ["pool_id", "name"],
        "properties": {"pool_id": STR, "name": STR, "description": STR, "ips": {"type": "array", "items": STR},
                       "is_linked": BOOL}}
STATS = {"type": "object", "required": ["stats"], "properties": {"stats": {"type": "array", "items": OBJ},
                                                                   "start": STR, "end": STR, "resolution": STR}}
NULLABLE = {"type": ["string", "null"]}
_FILTER = {"type": "object", "properties": {"AND": {"type": "array", "maxItems": 3, "items": {
    "type": "object", "required": ["attribute", "comparator", "values"],
    "properties": {"attribute": STR, "comparator": STR,
                   "values": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                       "label": STR, "value": STR}}}}}}}}
_STRINGS = {"type": "array", "maxItems": 5, "items": STR}
METRICS_QUERY = {"type": "object", "properties": {
    "start": STR, "end": STR, "resolution": STR, "duration": STR, "dimensions": _STRINGS, "metrics": _STRINGS,
    "filter": _FILTER, "include_subaccounts": BOOL, "include_aggregates": BOOL,
    "pagination": {"type": "object", "properties": {"sort": STR, "skip": INT, "limit": INT}}}}
METRICS_RESULT = {"type": "object", "required": ["start", "end", "resolution", "dimensions", "items", "pagination"],
                  "properties": {"start": STR, "end": STR, "resolution": STR, "dimensions": _STRINGS,
                                 "items": {"type": "array", "items": OBJ}, "aggregates": OBJ, "pagination": OBJ}}
LOGS_QUERY = {"type": "object", "properties": {
    "start": STR, "end": STR, "events": _STRINGS, "metric_events": _STRINGS, "filter": _FILTER,
    "include_subaccounts": BOOL, "include_totals": BOOL,
    "pagination": {"type": "object", "properties": {"sort": STR, "token": STR, "limit": INT}}}}
LOGS_RESULT = {"type": "object", "required": ["start", "end", "items", "pagination"],
               "properties": {"start": STR, "end": STR, "items": {"type": "array", "items": OBJ}, "pagination": OBJ,
                              "aggregates": OBJ}}
TAGS_QUERY = {"type": "object", "properties": {
    "tag": STR, "include_subaccounts": BOOL, "include_metrics": BOOL,
    "pagination": {"type": "object", "properties": {"sort": STR, "skip": INT, "limit": INT, "include_total": BOOL}}}}
TAGS_RESULT = {"type": "object", "required": ["items", "pagination"],
               "properties": {"items": {"type": "array", "items": OBJ}, "pagination": OBJ}}
TAG_BODY = {"type": "object", "properties": {"tag": STR, "description": STR}}
KEY = {"type": "object", "required": ["id", "kind", "role", "created_at"],
       "properties": {"id": STR, "description": STR, "kind": STR, "role": STR, "domain_name": NULLABLE,
                      "requestor": NULLABLE, "user_name": NULLABLE, "user_id": NULLABLE, "is_disabled": BOOL,
                      "expires_at": NULLABLE, "created_at": STR, "updated_at": STR, "hint": STR}}
SUPPRESSION_KINDS = ("bounces", "unsubscribes", "complaints", "whitelists")
EVENT_FILTERS = ("event", "recipient", "recipients", "message-id", "severity", "tags", "from", "to", "list", "subject",
                 "attachment", "size")  # Mailgun's documented filters: any other parameter is a 400
# Bounded so a fuzzer's inputs stay the size real callers send (the API's own limits are far larger).
SHORT = {"type": "string", "maxLength": 200}


def _q(name: str, schema=SHORT, description: str = "", required: bool = False) -> dict:
    out = {"name": name, "in": "query", "schema": schema, "required": required}
    if description:
        out["description"] = description
    return out


def _p(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _form(fields: dict, required: tuple = (), files: tuple = (), json_body: dict | None = None) -> dict:
    """A body of form fields: multipart (with `files` as uploads) or urlencoded (unless it needs a file)."""
    def schema(props: dict) -> dict:
        out = {"type": "object", "properties": props}
        if required:
            out["required"] = list(required)
        return out

    uploads = {f: {"type": "string", "format": "binary"} for f in files}
    content = {"multipart/form-data": {"schema": schema({**fields, **uploads})}}
    if "file" not in files:
        content["application/x-www-form-urlencoded"] = {"schema": schema(dict(fields))}
    if json_body is not None:
        content["application/json"] = {"schema": json_body}
    return {"required": bool(required) or "file" in files, "content": content}


def _json_body(schema: dict, required: tuple = ()) -> dict:
    body = dict(schema, required=list(required)) if required else schema
    return {"required": bool(required), "content": {"application/json": {"schema": body}}}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*extra: int) -> dict:
    out = {"4XX": _json(ERROR, "Mailgun error: bad input (400), bad key (401), not found (404), too large (413)")}
    for code in extra:
        out[str(code)] = _json(ERROR, {503: "Service unavailable"}.get(code, "Error"))
    return out


def op(summary: str, ok: dict | None, *, params: list | None = None, body: dict | None = None,
       public: bool = False, tag: str = "", responses: dict | None = None) -> dict:
    out: dict = {"summary": summary, "responses": {}}
    if tag:
        out["tags"] = [tag]
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = body
    if ok is not None:
        out["responses"]["200"] = ok
    out["responses"].update(responses or {})
    if public:
        out["security"] = []
    else:
        out["responses"].update(_errors())
    return out


# operations ----------------------------------------------------------------------------------------
SEND_OPTIONS = {
    "o:tag": {"type": "array", "items": SHORT, "maxItems": 5, "description": "up to 3 tags are kept"},
    "o:testmode": YESNO, "o:deliverytime": SHORT, "o:tracking": YESNO, "o:tracking-clicks": SHORT,
    "o:tracking-opens": YESNO, "o:require-tls": YESNO, "o:skip-verification": YESNO, "o:sending-ip": SHORT,
    "o:sending-ip-pool": SHORT, "o:dkim": YESNO,
}
SEND_FIELDS = {
    "from": SHORT, "to": {"type": "array", "items": SHORT, "maxItems": 5}, "cc": SHORT, "bcc": SHORT,
    "subject": SHORT, "text": {"type": "string", "maxLength": 2000}, "html": {"type": "string", "maxLength": 2000},
    "amp-html": SHORT, "recipient-variables": SHORT, "h:Reply-To": SHORT, "v:my-var": SHORT,
    "h:Message-Id": {**SHORT, "description": "the message's Message-ID, <left@right> (brackets optional); unique"
                                             " per domain: a second message with it is a 400"},
    "template": SHORT, "t:version": SHORT, "t:text": YESNO, "t:variables": SHORT, **SEND_OPTIONS,
}
TEMPLATE = {"type": "object", "required": ["template"], "properties": {"template": OBJ}}
TEMPLATE_FIELDS = {"name": SHORT, "description": SHORT, "template": {"type": "string", "maxLength": 2000},
                   "tag": SHORT, "engine": SHORT, "comment": SHORT, "headers": SHORT}
VERSION_FIELDS = {"template": {"type": "string", "maxLength": 2000}, "tag": SHORT, "engine": SHORT,
                  "comment": SHORT, "active": YESNO, "headers": SHORT}


DKIM_RECORD = {"type": "object", "required": ["record_type", "name", "value"],
               "properties": {"record_type": STR, "name": STR, "value": STR, "valid": STR, "is_active": BOOL,
                              "cached": {"type": "array"}}}
DKIM_KEY = {"type": "object", "required": ["signing_domain", "selector", "dns_record"],
            "properties": {"signing_domain": STR, "selector": STR, "dns_record": DKIM_RECORD, "active": BOOL,
                           "state": {"type": "string", "enum": ["active", "pending", "inactive", "retiring"]},
                           "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
                           "bits": {"type": ["integer", "null"]}}}
DKIM_MANAGED = {"type": "object", "required": ["domain"], "properties": {"domain": {
    "type": "object", "required": ["name", "rotation_enabled", "rotation_interval"],
    "properties": {"id": STR, "account_id": STR, "sid": STR, "name": STR, "state": STR, "active_selector": STR,
                   "rotation_enabled": STR, "rotation_interval": STR, "records": {"type": "array", "items": OBJ}}}}}
KEY_ACTIVATION = {"type": "object", "required": ["message", "authority", "selector", "active"],
                  "properties": {"message": STR, "authority": STR, "selector": STR, "active": BOOL}}


def _dkim(add, d: dict) -> None:
    """DKIM keys (envoi.api.resources.dkim)."""
    authority, selector = _p("domain"), _p("selector")
    add("/v1/dkim/keys", "get", op(
        "The account's DKIM keys (signing, pending, inactive, retiring), each with its DNS record", _json(PAGED),
        params=[_q("signing_domain"), _q("selector"), _q("limit", INT), _q("page")], tag="dkim"))
    add("/v1/dkim/keys", "post", op(
        "Create a DKIM key (RSA `bits` 1024 or 2048, Envoi also 4096; Envoi's `algorithm=ed25519`) or import one"
        " (`pem`, RSA or Ed25519); it signs once activated", _json(
            {"type": "object", "required": ["signing_domain", "selector", "dns_record"],
             "properties": {"signing_domain": STR, "selector": STR, "dns_record": DKIM_RECORD}}),
        body=_form({"signing_domain": SHORT, "selector": SHORT, "bits": SHORT,
                    "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]}, "pem": SHORT},
                   ("signing_domain", "selector"), files=("pem",)), tag="dkim"))
    add("/v1/dkim/keys", "delete", op(
        "Delete a DKIM key that does not sign (or call off a rotation's next key)", _json(MESSAGE),
        params=[_q("signing_domain", required=True), _q("selector", required=True)], tag="dkim"))
    add("/v4/domains/{domain}/keys/{selector}/activate", "put", op(
        "Sign with this key, once its record is found in DNS; the key it replaces is kept retiring",
        _json(KEY_ACTIVATION), params=[authority, selector], tag="dkim"))
    add("/v4/domains/{domain}/keys/{selector}/deactivate", "put", op(
        "Stop signing with this key (the ed25519 one; the RSA key is replaced by activating another)",
        _json(KEY_ACTIVATION), params=[authority, selector], tag="dkim"))
    add("/v1/dkim_management/domains/{domain}/rotation", "get", op(
        "The domain's automatic DKIM rotation settings and DKIM records", _json(DKIM_MANAGED), params=[d],
        tag="dkim"))
    add("/v1/dkim_management/domains/{domain}/rotation", "put", op(
        "Turn automatic DKIM rotation on or off (`rotation_interval` like 30d, at least 5d)", _json(DKIM_MANAGED),
        params=[d], body=_form({"rotation_enabled": YESNO, "rotation_interval": SHORT}, ("rotation_enabled",)),
        tag="dkim"))
    add("/v1/dkim_management/domains/{domain}/rotate", "post", op(
        "Rotate now: a new key under a new selector, signing once its record is found in DNS", _json(MESSAGE),
        params=[d], tag="dkim"))
    add("/v3/domains/{domain}/dkim_selector", "put", op(
        "Change the selector of the domain's RSA key (once verified: signing moves once the new record is found);"
        " dkim_selector in the form or, as Mailgun documents and mailgun.js sends it, the query string",
        _json(MESSAGE), params=[d], body=_form({"dkim_selector": SHORT}), tag="dkim"))
    add("/v3/domains/{domain}/dkim_authority", "put", op(
        "self=false: sign as the nearest parent domain of the account, with its keys; self=true: as itself (self in"
        " the form or the query string)",
        _json({"type": "object", "required": ["message", "changed", "sending_dns_records"],
               "properties": {"message": STR, "changed": BOOL, "sending_dns_records": {"type": "array", "items": OBJ}}}),
        params=[d], body=_form({"self": YESNO}, ("self",)), tag="dkim"))


def _templates(add, base: str, scope: list, what: str) -> None:
    """The templates API under base (/v3/{domain}/templates or /v4/templates)."""
    name, tag, new_tag = _p("name"), _p("tag"), _p("new_tag")
    paging = [_q("limit", INT), _q("page", {"type": "string", "enum": ["first", "last", "next", "prev"]}), _q("p")]
    add(base, "get", op(f"List {what} (paging: limit, page, p)", _json(PAGED), params=[*scope, *paging],
                        tag="templates"))
    add(base, "post", op(f"Store a template of {what}; with `template`, its first (active) version",
                         _json(TEMPLATE), params=scope, body=_form(TEMPLATE_FIELDS, ("name",)), tag="templates"))
    add(base, "delete", op(f"Delete all {what} and their versions", _json(MESSAGE), params=scope, tag="templates"))
    item = f"{base}/{{name}}"
    add(item, "get", op("A template (active=yes: with its active version's content)", _json(TEMPLATE),
                        params=[*scope, name, _q("active", YESNO)], tag="templates"))
    add(item, "put", op("Update a template's description", _json(MESSAGE), params=[*scope, name],
                        body=_form({"description": SHORT}, ("description",)), tag="templates"))
    add(item, "delete", op("Delete a template and its versions", _json(MESSAGE), params=[*scope, name],
                           tag="templates"))
    versions = f"{item}/versions"
    add(versions, "get", op("A template's versions (paging: limit, page, p)", _json(TEMPLATE),
                            params=[*scope, name, *paging], tag="templates"))
    add(versions, "post", op("Store a new version (active=yes makes it the active one)", _json(TEMPLATE),
                             params=[*scope, name], body=_form(VERSION_FIELDS, ("template", "tag")), tag="templates"))
    version = f"{versions}/{{tag}}"
    add(version, "get", op("A version with its content", _json(TEMPLATE), params=[*scope, name, tag], tag="templates"))
    add(version, "put", op("Update a version's content or comment, or make it active", _json(MESSAGE),
                           params=[*scope, name, tag], body=_form(VERSION_FIELDS), tag="templates"))
    add(version, "delete", op("Delete a version", _json(MESSAGE), params=[*scope, name, tag], tag="templates"))
    add(f"{version}/copy/{{new_tag}}", "put", op("Copy a version to a new tag", _json(MESSAGE),
                                                 params=[*scope, name, tag, new_tag],
                                                 body=_form({"comment": SHORT}), tag="templates"))


MAILING_LIST = {"type": "object", "required": ["address", "access_level", "reply_preference", "members_count"],
                "properties": {"address": STR, "name": STR, "description": STR, "access_level": STR,
                               "reply_preference": STR, "created_at": STR, "members_count": INT}}
LIST_MEMBER = {"type": "object", "required": ["address", "subscribed"],
               "properties": {"address": STR, "name": STR, "vars": OBJ, "subscribed": BOOL}}
COUNTED = {"type": "object", "required": ["total_count", "items"],
           "properties": {"total_count": INT, "items": {"type": "array", "items": OBJ}}}


def _lists(add) -> None:
    """/v3/lists and members (account-wide; Mailgun's shapes)."""
    address, member = _p("address"), _p("member")
    one_list = {"type": "object", "required": ["list"], "properties": {"list": MAILING_LIST, "message": STR}}
    one_member = {"type": "object", "required": ["member"], "properties": {"member": LIST_MEMBER, "message": STR}}
    list_fields = {"address": SHORT, "name": SHORT, "description": SHORT,
                   "access_level": {"type": "string", "enum": ["readonly", "members", "everyone"]},
                   "reply_preference": {"type": "string", "enum": ["list", "sender"]}}
    member_fields = {"address": SHORT, "name": SHORT, "vars": SHORT, "subscribed": YESNO, "upsert": YESNO}
    paging = [_q("limit", INT), _q("page", {"type": "string", "enum": ["first", "last", "next", "prev"]}),
              _q("address")]
    add("/v3/lists", "get", op("Mailing lists of the account (limit, skip, address)", _json(COUNTED),
                               params=[_q("limit", INT), _q("skip", INT), _q("address")], tag="lists"))
    add("/v3/lists", "post", op("Create a mailing list (its address on one of the account's domains)",
                                _json(one_list), body=_form(list_fields, ("address",)), tag="lists"))
    add("/v3/lists/pages", "get", op("Mailing lists by page (address is the pivot)", _json(PAGED), params=paging,
                                     tag="lists"))
    add("/v3/lists/{address}", "get", op("One mailing list", _json(one_list), params=[address], tag="lists"))
    add("/v3/lists/{address}", "put", op("Update a mailing list", _json(one_list), params=[address],
                                         body=_form(list_fields), tag="lists"))
    add("/v3/lists/{address}", "delete", op("Delete a mailing list and its members", _json(
        {"type": "object", "required": ["address", "message"], "properties": {"address": STR, "message": STR}}),
        params=[address], tag="lists"))
    add("/v3/lists/{address}/members", "get", op("Members (subscribed, limit up to 100, skip)", _json(COUNTED),
                                                 params=[address, _q("subscribed", YESNO), _q("limit", INT),
                                                         _q("skip", INT)], tag="lists"))
    add("/v3/lists/{address}/members", "post", op("Add a member (upsert: update it if present)", _json(one_member),
                                                  params=[address], body=_form(member_fields, ("address",)),
                                                  tag="lists"))
    add("/v3/lists/{address}/members/pages", "get", op("Members by page (address is the pivot)", _json(PAGED),
                                                       params=[address, _q("subscribed", YESNO), *paging],
                                                       tag="lists"))
    add("/v3/lists/{address}/members.json", "post", op(
        "Add up to 1,000 members: `members` a JSON array of addresses or member objects", _json(one_list),
        params=[address], body=_form({"members": SHORT, "upsert": YESNO}, ("members",)), tag="lists"))
    add("/v3/lists/{address}/members.csv", "post", op(
        "Add up to 1,000 members from a CSV file (`members`; header row with address, name, vars, subscribed)",
        _json(one_list), params=[address], body=_form({"subscribed": YESNO, "upsert": YESNO}, files=("members",)),
        tag="lists"))
    add("/v3/lists/{address}/members/{member}", "get", op("One member", _json(one_member), params=[address, member],
                                                          tag="lists"))
    add("/v3/lists/{address}/members/{member}", "put", op("Update a member", _json(one_member),
                                                          params=[address, member],
                                                          body=_form({k: v for k, v in member_fields.items()
                                                                      if k != "upsert"}), tag="lists"))
    add("/v3/lists/{address}/members/{member}", "delete", op("Remove a member", _json(
        {"type": "object", "required": ["member", "message"], "properties": {"member": OBJ, "message": STR}}),
        params=[address, member], tag="lists"))
    list_job = {"type": "object", "required": ["id", "status", "quantity", "records_processed", "summary"],
                "properties": {"id": STR, "created_at": INT, "status": STR, "quantity": INT,
                               "records_processed": INT, "summary": OBJ, "download_url": OBJ}}
    add("/v3/lists/{address}/validate", "post", op(
        "Validate the list's members (a bulk validation job named by the list's address)", None, params=[address],
        tag="lists", responses={"202": _json({"type": "object", "required": ["id", "message"],
                                              "properties": {"id": STR, "message": STR}}, "Accepted: workers validate it")}))
    add("/v3/lists/{address}/validate", "get", op("The list validation's status, progress, summary and results",
                                                   _json(list_job), params=[address], tag="lists"))
    add("/v3/lists/{address}/validate", "delete", op("Cancel the list's validation, or delete its results",
                                                      _json(MESSAGE), params=[address], tag="lists"))


def _paths() -> dict:
    d, token = _p("domain"), _p("token")
    paths: dict[str, dict] = {}

    def add(path: str, method: str, operation: dict) -> None:
        paths.setdefault(path, {})[method] = operation

    # messages
    over_quota = {"420": _json(ERROR, "The plan's daily or monthly recipient limit (billing on): nothing of the"
                                      " message was accepted; Retry-After and the message say when it resets")}
    add("/v3/{domain}/messages", "post", op(
        "Send a message built from form fields (h:* headers, v:* variables, o:* options)", _json(QUEUED),
        params=[d], body=_form(SEND_FIELDS, ("from", "to"), files=("attachment", "inline")), tag="messages",
        responses=over_quota))
    add("/v3/{domain}/messages.mime", "post", op(
        "Send a caller-built MIME message to the `to` recipients", _json(QUEUED), params=[d],
        body=_form({"to": {"type": "array", "items": SHORT, "maxItems": 5}, "message": {"type": "string", "maxLength": 4000},
                    **SEND_OPTIONS}, ("to", "message")), tag="messages", responses=over_quota))
    # events and logs
    filters = [_q(f, description="filter expression") for f in EVENT_FILTERS]
    query = [_q("begin"), _q("end"), _q("ascending", YESNO), _q("limit", {"type": "integer"}), _q("pretty", YESNO),
             *filters]
    add("/v3/{domain}/events", "get", op("Query events; a parameter that is neither a filter nor a query option"
                                         " is a 400 naming it", _json(PAGED), params=[d, *query], tag="events"))
    add("/v3/{domain}/events/{token}", "get", op("A page of a previous events query (opaque token)",
                                                  _json(PAGED), params=[d, token], tag="events"))
    live = [_q("timeout", description="seconds"), _q("last_event_id"), *filters]
    sse = {"description": "server-sent events", "content": {"text/event-stream": {"schema": STR}}}
    add("/v3/{domain}/events/live", "get", op("Live events (SSE)", sse, params=[d, *live], tag="events",
                                               responses=_errors(503)))
    add("/v3/events/live", "get", op("Live events of every domain of the account (SSE)", sse, params=live,
                                     tag="events", responses=_errors(503)))
    add("/v3/{domain}/messages/{message_id}/trace", "get", op(
        "Every attempt for every recipient of a message", _json(OBJ), params=[d, _p("message_id")], tag="events"))
    stats_q = [_q("event", description="required: accepted, delivered, failed, …"), _q("start"), _q("end"),
               _q("resolution"), _q("duration")]
    add("/v3/{domain}/stats/total", "get", op("Totals per event type", _json(STATS), params=[d, *stats_q],
                                              tag="stats"))
    add("/v3/stats/total", "get", op("Totals per event type over every domain of the account", _json(STATS),
                                     params=stats_q, tag="stats"))
    add("/v3/{domain}/tags", "get", op("Tags", _json(PAGED), params=[d, _q("limit", INT), _q("page"),
                                                                      _q("tag"), _q("prefix")], tag="stats"))
    tag_p = _p("tag")
    add("/v3/{domain}/tags/{tag}", "get", op("A tag", _json(OBJ), params=[d, tag_p], tag="stats"))
    add("/v3/{domain}/tags/{tag}", "put", op("Describe a tag", _json(MESSAGE), params=[d, tag_p],
                                             body=_form({"description": SHORT}), tag="stats"))
    add("/v3/{domain}/tags/{tag}", "delete", op("Delete a tag", _json(MESSAGE), params=[d, tag_p], tag="stats"))
    add("/v3/{domain}/tags/{tag}/stats", "get", op("Totals of a tag", _json(STATS), params=[d, tag_p, *stats_q],
                                                   tag="stats"))
    # analytics (envoi/events/analytics.py, docs/analytics.md): Mailgun's JSON query APIs
    add("/v1/analytics/metrics", "post", op(
        "Metrics by dimensions (time, domain, tag, ip, recipient_domain, recipient_provider, country, device,"
        " bot), filtered (filter.AND of attribute/comparator/values), paged", _json(METRICS_RESULT),
        body=_json_body(METRICS_QUERY), tag="analytics"))
    add("/v1/analytics/usage/metrics", "post", op(
        "Usage metrics (processed_count; Mailgun products Envoi lacks are 0)", _json(METRICS_RESULT),
        body=_json_body(METRICS_QUERY), tag="analytics"))
    add("/v1/analytics/logs", "post", op(
        "Logs: the events of every domain of the account (events, metric_events, filter, pagination token)",
        _json(LOGS_RESULT), body=_json_body(LOGS_QUERY), tag="analytics"))
    add("/v1/analytics/tags", "post", op("The account's tags (prefix `tag`, pagination sort/skip/limit,"
                                         " include_metrics)", _json(TAGS_RESULT), body=_json_body(TAGS_QUERY),
                                         tag="analytics"))
    add("/v1/analytics/tags", "put", op("Describe a tag on every domain of the account", _json(MESSAGE),
                                        body=_json_body(TAG_BODY, ("tag",)), tag="analytics"))
    add("/v1/analytics/tags", "delete", op("Delete a tag (and its rollup counts) from every domain of the account",
                                           _json(MESSAGE), body=_json_body(TAG_BODY, ("tag",)), tag="analytics"))
    add("/v1/analytics/tags/limits", "get", op("The account's tag count and limit", _json(
        {"type": "object", "required": ["limit", "count", "limit_reached"],
         "properties": {"limit": INT, "count": INT, "limit_reached": BOOL}}), tag="analytics"))
    add("/v3/stats/filter", "get", op(
        "Account totals filtered (filter=domain:…, tag:…, ip:…, provider:…, country:…) and grouped (group=total,"
        " time, day, month, domain, ip, provider, tag, country)", _json(STATS),
        params=[*stats_q, _q("filter"), _q("group")], tag="stats"))
    kind_p = _p("kind")
    add("/v3/{domain}/aggregates/{kind}", "get", op(
        "Engagement by provider (recipient domain), device or country (kind: providers, devices, countries)",
        _json(OBJ), params=[d, kind_p, _q("start"), _q("end"), _q("duration")], tag="stats"))
    add("/v3/{domain}/tags/{tag}/stats/aggregates/{kind}", "get", op(
        "A tag's engagement by provider, device or country", _json(OBJ),
        params=[d, tag_p, kind_p, _q("start"), _q("end"), _q("duration")], tag="stats"))
    # domains and credentials
    domain_list = _json({"type": "object", "required": ["total_count", "items"],
                         "properties": {"total_count": INT, "items": {"type": "array", "items": DOMAIN}}})
    list_params = [_q("limit", INT), _q("skip", INT),
                   _q("state", {"type": "string", "enum": ["active", "unverified", "disabled"]}),
                   _q("search", SHORT, "A part of the name, taken literally"),
                   _q("sort", {"type": "string", "enum": ["name", "name:asc", "name:desc"]},
                      "Default: newest first"),
                   _q("include_subaccounts", YESNO, "The subaccounts' domains too (each with its subaccount_id)")]
    settings_fields = {"spam_action": {"type": "string", "enum": ["disabled", "block", "tag"]}, "wildcard": YESNO,
                       "web_prefix": SHORT, "web_scheme": {"type": "string", "enum": ["http", "https"]},
                       "require_tls": YESNO, "skip_verification": YESNO, "smtp_password": SHORT}
    domain_fields = {"name": SHORT, "dkim_selector": SHORT, "dkim_key_size": {"type": "string", "enum": ["1024", "2048"]},
                     "force_dkim_authority": YESNO, **settings_fields}
    one_domain = {"type": "object", "required": ["domain"], "properties": {"domain": DOMAIN, **DNS_RECORDS}}
    for version in ("v3", "v4"):  # Mailgun's SDKs use both (the Python SDK creates at v3, lists at v4)
        add(f"/{version}/domains", "get", op("List the account's domains (paging, state, search, sort)", domain_list,
                                             params=list_params, tag="domains"))
        add(f"/{version}/domains", "post", op(
            "Add a domain; returns the DNS records to publish (from the operator's settings)", _json(one_domain),
            body=_form(domain_fields, ("name",)), tag="domains",
            responses={"403": _json(ERROR, "The plan's max_domains is reached (billing on): nothing was added")}))
        path = f"/{version}/domains/{{domain}}"
        add(path, "get", op("A domain and its DNS records, each with what the last check found", _json(one_domain),
                            params=[d], tag="domains"))
        add(path, "put", op("Change a domain's settings (only those named)", _json(one_domain), params=[d],
                            body=_form({**settings_fields, "ip_overflow": {
                                "type": "string", "enum": ["overflow", "wait", "default"],
                                "description": "Envoi extension: mail pinned to another relay host's dedicated IPs"
                                               " (or capped by warm-up) overflows to the shared pool or waits;"
                                               " default = the relay's ENVOI_WARMUP_POLICY"}}), tag="domains"))
        add(path, "delete", op("Delete a domain", _json(MESSAGE), params=[d], tag="domains"))
        add(f"{path}/verify", "put", op(
            "Look the domain's DNS records up now (SPF, DKIM, tracking CNAME, DMARC, MX); found SPF and DKIM make"
            " it active, a broken one unverified (each record's `valid`)",
            _json({"type": "object", "required": ["message", "domain"],
                   "properties": {"message": STR, "domain": DOMAIN, **DNS_RECORDS}}), params=[d], tag="domains"))
    connection = {"require_tls": BOOL, "skip_verification": BOOL}
    add("/v3/domains/{domain}/connection", "get", op(
        "The domain's delivery TLS defaults", _json({"type": "object", "required": ["connection"], "properties": {
            "connection": {"type": "object", "properties": connection}}}), params=[d], tag="domains"))
    add("/v3/domains/{domain}/connection", "put", op(
        "Set the domain's delivery TLS defaults (a message's o:require-tls / o:skip-verification overrides them)",
        _json({"type": "object", "required": ["message"], "properties": {"message": STR, **connection}}),
        params=[d], body=_form({"require_tls": YESNO, "skip_verification": YESNO}), tag="domains"))
    add("/v3/domains/{domain}/web_prefix", "put", op(
        "Set the tracking host's label (<web_prefix>.<domain>, whose CNAME the records ask for)", _json(MESSAGE),
        params=[d], body=_form({"web_prefix": SHORT}, ("web_prefix",)), tag="domains"))
    recipient = {"type": "object", "required": ["email", "activated"], "properties": {"email": STR, "activated": BOOL}}
    add("/v5/sandbox/auth_recipients", "get", op(
        "Authorised recipients: the only addresses unverified domains may send to", _json(
            {"type": "object", "required": ["recipients"], "properties": {"recipients": {"type": "array", "items": recipient}}}),
        tag="domains"))
    add("/v5/sandbox/auth_recipients", "post", op(
        "Add an authorised recipient (at most 5)", _json(
            {"type": "object", "required": ["recipient"], "properties": {"recipient": recipient}}),
        params=[_q("email")], body=_form({"email": SHORT}), tag="domains"))
    add("/v5/sandbox/auth_recipients/{email}", "delete", op("Remove an authorised recipient", _json(MESSAGE),
                                                            params=[_p("email")], tag="domains"))
    add("/v3/domains/{domain}/messages/{storage_key}", "get", op(
        "A stored message (the storage.url of its events); Accept: message/rfc2822 for the MIME",
        _json(OBJ), params=[d, _p("storage_key")], tag="messages"))
    add("/v3/domains/{domain}/messages/{storage_key}/attachments/{index}", "get", op(
        "One attachment of a stored message (the `url` in its `attachments`), as a download",
        {"description": "the attachment's bytes",
         "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        params=[d, _p("storage_key"), _p("index")], tag="messages"))
    cancelled = {"type": "object", "required": ["message", "cancelled_recipients"],
                 "properties": {"message": STR, "cancelled_recipients": INT}}
    add("/v3/domains/{domain}/messages/{storage_key}", "post", op(
        "Resend a stored message to the `to` recipients (a new message: new Message-ID, sent now)", _json(QUEUED),
        params=[d, _p("storage_key")], body=_form({"to": {"type": "array", "items": SHORT, "maxItems": 5}}, ("to",)),
        tag="messages"))
    add("/v3/domains/{domain}/messages/{storage_key}", "delete", op(
        "Envoi extension: cancel a message still waiting (scheduled with o:deliverytime, or queued for a"
        " retry). Its waiting recipients get a permanent `failed` event with reason `cancelled`; 409 when"
        " it was already delivered or failed, or a relay is delivering it right now",
        _json(cancelled), params=[d, _p("storage_key")], tag="messages",
        responses={"409": _json(ERROR, "Nothing of the message is waiting any more")}))
    queue = {"type": "object", "required": ["is_disabled", "disabled"],
             "properties": {"is_disabled": BOOL, "disabled": {"type": "object", "properties": {"until": STR, "reason": STR}}}}
    add("/v3/domains/{domain}/sending_queues", "get", op(
        "Queue status: `regular` and `scheduled` are disabled (with the reason a send would get) while the domain"
        " is disabled or its account may not send", _json({"type": "object", "required": ["regular", "scheduled"],
                                                            "properties": {"regular": queue, "scheduled": queue}}),
        params=[d], tag="messages"))
    add("/v3/{domain}/envelopes", "delete", op(
        "Delete the domain's scheduled and undelivered mail (each waiting recipient gets a permanent"
        " `failed` event with reason `cancelled`; what a relay is delivering right now goes on)",
        _json(cancelled), params=[d], tag="messages"))
    add("/v3/domains/{domain}/credentials", "get", op("SMTP credentials", _json(
        {"type": "object", "required": ["total_count", "items"], "properties": {"total_count": INT, "items": {"type": "array"}}}),
        params=[d], tag="domains"))
    add("/v3/domains/{domain}/credentials", "post", op("Create SMTP credentials", _json(MESSAGE), params=[d],
                                                       body=_form({"login": SHORT, "password": SHORT}, ("login", "password")),
                                                       tag="domains"))
    login = _p("login")
    add("/v3/domains/{domain}/credentials/{login}", "put", op(
        "Change an SMTP password", _json(MESSAGE), params=[d, login], body=_form({"password": SHORT}, ("password",)),
        tag="domains"))
    add("/v3/domains/{domain}/credentials/{login}", "delete", op("Delete SMTP credentials", _json(MESSAGE),
                                                                 params=[d, login], tag="domains"))
    address = _p("address")
    add("/v3/privacy/addresses/{address}", "get", op("Export what is held on an address", _json(OBJ),
                                                     params=[address], tag="privacy"))
    add("/v3/privacy/addresses/{address}", "delete", op("Erase what is held on an address", _json(MESSAGE),
                                                        params=[address], tag="privacy"))
    # stored templates
    _templates(add, "/v3/{domain}/templates", [d], "the domain's templates")
    _templates(add, "/v4/templates", [], "the account's templates")
    # address validation
    validation = {"type": "object", "required": ["address", "is_disposable_address", "is_role_address", "reason",
                                                 "result", "risk"],
                  "properties": {"address": STR, "is_disposable_address": BOOL, "is_role_address": BOOL,
                                 "reason": {"type": "array", "items": STR},
                                 "result": {"type": "string", "enum": ["deliverable", "undeliverable", "do_not_send",
                                                                       "catch_all", "unknown"]},
                                 "risk": {"type": "string", "enum": ["high", "medium", "low", "unknown"]},
                                 "did_you_mean": STR}}
    address_field = {"type": "string", "minLength": 1, "maxLength": 512}
    busy = {"429": _json(ERROR, "Too many validations of the account running at once")}
    add("/v4/address/validate", "get", op(
        "Validate an address: syntax, DNS (MX, null MX), disposable, role, did_you_mean", _json(validation),
        params=[_q("address", address_field, required=True), _q("provider_lookup", YESNO)], tag="validation",
        responses=busy))
    add("/v4/address/validate", "post", op(
        "Validate an address (form)", _json(validation),
        body=_form({"address": address_field, "provider_lookup": YESNO}, required=("address",)), tag="validation",
        responses=busy))
    job = {"type": "object", "required": ["id", "status", "quantity", "records_processed", "summary"],
           "properties": {"id": STR, "created_at": INT, "status": STR, "quantity": INT, "records_processed": INT,
                          "summary": OBJ, "download_url": OBJ}}
    list_id = _p("list_id")
    add("/v4/address/validate/bulk", "get", op(
        "List bulk validation jobs, newest first", _json({"type": "object", "required": ["jobs", "paging"],
                                                          "properties": {"jobs": {"type": "array", "items": job},
                                                                         "total": INT, "paging": OBJ}}),
        params=[_q("limit", INT), _q("page"), _q("pivot")], tag="validation"))
    add("/v4/address/validate/bulk/{list_id}", "post", op(
        "Create a bulk validation job from a CSV (or gzipped CSV) upload with an email column", None,
        params=[list_id], body=_form({}, files=("file",)), tag="validation",
        responses={"202": _json({"type": "object", "required": ["id", "message"],
                                 "properties": {"id": STR, "message": STR}}, "Accepted: workers validate it")}))
    add("/v4/address/validate/bulk/{list_id}", "get", op("A bulk validation job's status, progress and summary",
                                                          _json(job), params=[list_id], tag="validation"))
    add("/v4/address/validate/bulk/{list_id}", "delete", op("Cancel a bulk validation job, or delete its results",
                                                             _json(MESSAGE), params=[list_id], tag="validation"))
    add("/v4/address/validate/download/{token}", "get", op(
        "A finished job's results by its signed download_url (public; CSV or JSON)",
        {"description": "the results", "content": {"text/csv": {"schema": STR},
                                                   "application/json": {"schema": {"type": "array", "items": validation}}}},
        params=[token], public=True, responses={"404": _json(ERROR, "Unknown, forged or expired link")},
        tag="validation"))
    # suppressions
    for kind in SUPPRESSION_KINDS:
        base = f"/v3/{{domain}}/{kind}"
        entry = {"address": SHORT, "code": SHORT, "error": SHORT, "tag": SHORT, "created_at": SHORT, "domain": SHORT}
        add(base, "get", op(f"List {kind} (term: only values starting with it)", _json(PAGED),
                            params=[d, _q("limit", INT), _q("page"), _q("address"), _q("term")], tag="suppressions"))
        add(base, "post", op(f"Add to {kind} (form: one; JSON: an array)", _json(MESSAGE), params=[d],
                             body=_form(entry, json_body={"type": "array", "items": {"type": "object", "properties": entry},
                                                          "maxItems": 5}),
                             tag="suppressions"))
        add(base, "delete", op(f"Clear {kind}", _json(MESSAGE), params=[d], tag="suppressions"))
        add(f"{base}/import", "post", op(f"Import {kind} from a CSV upload", _json(MESSAGE), params=[d],
                                         body=_form({}, files=("file",)), tag="suppressions"))
        add(f"{base}/{{address}}", "get", op(f"One address in {kind}", _json(OBJ), params=[d, address],
                                             tag="suppressions"))
        add(f"{base}/{{address}}", "delete", op(f"Remove an address from {kind}", _json(MESSAGE),
                                                params=[d, address, _q("tag")], tag="suppressions"))
    # mailing lists
    _lists(add)
    # webhooks
    hooks = "/v3/domains/{domain}/webhooks"
    name = _p("name")
    attempts_q = [_q("limit", INT), _q("before"), _q("url")]
    add(hooks, "get", op("Webhooks by event type", _json({"type": "object", "required": ["webhooks"]}), params=[d],
                         tag="webhooks"))
    add(hooks, "post", op("Create a webhook", _json(MESSAGE), params=[d],
                          body=_form({"id": SHORT, "url": {"type": "array", "items": SHORT, "maxItems": 3}}, ("id",)),
                          tag="webhooks"))
    add(f"{hooks}/attempts", "get", op("Webhook delivery attempts", _json(LIST), params=[d, *attempts_q],
                                       tag="webhooks"))
    add(f"{hooks}/{{name}}", "get", op("A webhook", _json(OBJ), params=[d, name], tag="webhooks"))
    add(f"{hooks}/{{name}}", "put", op("Replace a webhook's URLs", _json(MESSAGE), params=[d, name],
                                       body=_form({"url": {"type": "array", "items": SHORT, "maxItems": 3}}),
                                       tag="webhooks"))
    add(f"{hooks}/{{name}}", "delete", op("Delete a webhook", _json(MESSAGE), params=[d, name], tag="webhooks"))
    add(f"{hooks}/{{name}}/attempts", "get", op("Delivery attempts of a webhook", _json(LIST),
                                                params=[d, name, *attempts_q], tag="webhooks"))
    v4 = {"url": SHORT, "event_types": {"type": "array", "items": SHORT, "maxItems": 5}}
    add("/v4/domains/{domain}/webhooks", "get", op("Webhooks (URL-centric)", _json(OBJ), params=[d], tag="webhooks"))
    add("/v4/domains/{domain}/webhooks", "post", op("Add a URL for event types", _json(OBJ), params=[d],
                                                    body=_form(v4, ("url",)), tag="webhooks"))
    add("/v4/domains/{domain}/webhooks", "put", op("Replace a URL's event types", _json(OBJ), params=[d],
                                                   body=_form(v4, ("url",)), tag="webhooks"))
    add("/v4/domains/{domain}/webhooks", "delete", op("Remove URLs", _json(OBJ), params=[d, _q("url")],
                                                      tag="webhooks"))
    key = _json({"type": "object", "required": ["http_signing_key"], "properties": {"http_signing_key": STR}})
    add("/v5/accounts/http_signing_key", "get", op("The account's webhook signing key", key, tag="webhooks"))
    add("/v5/accounts/http_signing_key", "post", op("Regenerate the webhook signing key", key, tag="webhooks"))
    # account-level webhooks: one URL for some event types, fired for every domain of the account
    account_hook = {"type": "object", "required": ["webhook_id", "url", "event_types"],
                    "properties": {"webhook_id": STR, "url": STR, "description": STR, "created_at": STR,
                                   "event_types": {"type": "array", "items": STR}}}
    hook_fields = {"url": SHORT, "event_types": {"type": "array", "items": SHORT, "maxItems": 8},
                   "description": SHORT}
    no_content = {"204": {"description": "Done (no body)"}}
    webhook_id = _p("webhook_id")
    add("/v1/webhooks", "get", op("Account-level webhooks", _json(
        {"type": "object", "required": ["webhooks"], "properties": {"webhooks": {"type": "array", "items": account_hook}}}),
        params=[_q("webhook_ids", description="comma-separated ids")], tag="webhooks"))
    add("/v1/webhooks", "post", op("Create an account-level webhook (every domain of the account)", _json(
        {"type": "object", "required": ["webhook_id"], "properties": {"webhook_id": STR}}),
        body=_form(hook_fields, ("url", "event_types")), tag="webhooks"))
    add("/v1/webhooks", "delete", op("Delete account-level webhooks (webhook_ids, or all=true)", None,
                                     params=[_q("webhook_ids"), _q("all", YESNO)], responses=no_content,
                                     tag="webhooks"))
    add("/v1/webhooks/{webhook_id}", "get", op("An account-level webhook", _json(account_hook), params=[webhook_id],
                                                tag="webhooks"))
    add("/v1/webhooks/{webhook_id}", "put", op("Replace an account-level webhook", None, params=[webhook_id],
                                                body=_form(hook_fields, ("url", "event_types")), responses=no_content,
                                                tag="webhooks"))
    add("/v1/webhooks/{webhook_id}", "delete", op("Delete an account-level webhook", None, params=[webhook_id],
                                                   responses=no_content, tag="webhooks"))
    # subaccounts and custom monthly sending limits
    sub = {"type": "object", "required": ["subaccount"], "properties": {"subaccount": {
        "type": "object", "required": ["id", "name", "status"],
        "properties": {"id": STR, "name": STR, "status": {"type": "string", "enum": ["open", "disabled", "closed"]},
                       "created_at": STR}}}}
    sub_id = _p("subaccount_id")
    subs = "/v5/accounts/subaccounts"
    add(subs, "get", op("The account's subaccounts", _json(
        {"type": "object", "required": ["subaccounts", "total"],
         "properties": {"subaccounts": {"type": "array", "items": OBJ}, "total": INT}}),
        params=[_q("sort", {"type": "string", "enum": ["asc", "desc"]}), _q("filter"), _q("limit", INT),
                _q("skip", INT), _q("enabled", YESNO), _q("closed", YESNO)], tag="subaccounts"))
    add(subs, "post", op("Create a subaccount (an account of its own, linked to this one)", _json(sub),
                         params=[_q("name")], body=_form({"name": SHORT}), tag="subaccounts"))
    add(f"{subs}/{{subaccount_id}}", "get", op("A subaccount", _json(sub), params=[sub_id], tag="subaccounts"))
    add(f"{subs}/{{subaccount_id}}/disable", "post", op("Disable a subaccount: it cannot send", _json(sub),
                                                        params=[sub_id], tag="subaccounts"))
    add(f"{subs}/{{subaccount_id}}/enable", "post", op("Enable a subaccount", _json(sub), params=[sub_id],
                                                       tag="subaccounts"))
    limit_ok = _json({"type": "object", "required": ["limit", "current", "period"],
                      "properties": {"limit": INT, "current": INT, "period": STR}})
    success = _json({"type": "object", "required": ["success"], "properties": {"success": BOOL}})
    for path, scope, whose in ((f"{subs}/{{subaccount_id}}/limit/custom/monthly", [sub_id], "A subaccount's"),
                               ("/v5/accounts/limit/custom/monthly", [], "The account's")):
        add(path, "get", op(f"{whose} custom monthly sending limit and this month's count", limit_ok, params=scope,
                            tag="subaccounts"))
        add(path, "put", op(f"Set {whose.lower()} custom monthly sending limit (enforced at accept)", success,
                            params=[*scope, _q("limit", INT)], body=_form({"limit": SHORT}), tag="subaccounts"))
        add(path, "delete", op(f"Remove {whose.lower()} custom monthly sending limit", success, params=scope,
                               tag="subaccounts"))
    # tracking
    add("/v3/domains/{domain}/tracking", "get", op("Tracking settings", _json({"type": "object", "required": ["tracking"]}),
                                                   params=[d], tag="tracking"))
    add("/v3/domains/{domain}/tracking/{kind}", "put", op(
        "Change open, click or unsubscribe tracking", _json(OBJ),
        params=[d, {"name": "kind", "in": "path", "required": True, "schema": {"type": "string", "enum": ["open", "click", "unsubscribe"]}}],
        body=_form({"active": SHORT, "html_footer": SHORT, "text_footer": SHORT}), tag="tracking"))
    public_errors = {"404": _json(ERROR, "Unknown or forged token"),
                     "429": _json(ERROR, "Too many invalid tokens from this address")}
    add("/o/{token}", "get", op("Open-tracking pixel (public)", {"description": "a 1x1 GIF", "content": {
        "image/gif": {"schema": {"type": "string", "format": "binary"}}}}, params=[token], public=True,
        responses=public_errors, tag="tracking"))
    add("/c/{token}", "get", op("Click-tracking redirect (public)", None, params=[token], public=True, tag="tracking",
                                responses={"302": {"description": "redirect to the signed URL"}, **public_errors}))
    page = {"description": "HTML page", "content": {"text/html": {"schema": STR}}}
    add("/u/{token}", "get", op("Unsubscribe confirmation page (public)", page, params=[token], public=True,
                                responses=public_errors, tag="tracking"))
    add("/u/{token}", "post", op("Unsubscribe, RFC 8058 one-click (public)", page, params=[token], public=True,
                                 responses=public_errors, tag="tracking"))
    add("/l/{token}", "get", op("Mailing list unsubscribe confirmation page (public)", page, params=[token],
                                public=True, responses=public_errors, tag="tracking"))
    add("/l/{token}", "post", op("Unsubscribe a member from one mailing list (public; %mailing_list_unsubscribe_url%)",
                                 page, params=[token], public=True, responses=public_errors, tag="tracking"))
    # outbound TLS (MTA-STS) results as RFC 8460 reports
    day = _q("day", {"type": "string", "format": "date"}, "UTC day, YYYY-MM-DD (default: today)")
    add("/v3/tls/reports", "get", op("Recipient domains with outbound TLS results that day (operator)", _json(
        {"type": "object", "required": ["day", "items", "total_count"]}), params=[day], tag="tls"))
    add("/v3/tls/reports/{policy_domain}", "get", op(
        "A recipient domain's day of outbound TLS results as an RFC 8460 (TLS-RPT) report (operator)",
        _json({"type": "object", "required": ["organization-name", "date-range", "report-id", "policies"]}),
        params=[_p("policy_domain"), day], tag="tls"))
    # IPs, pools, warm-ups
    ip = _p("ip")
    ip_fields = {"ip": SHORT, "host": SHORT, "helo": SHORT, "ptr": SHORT, "dedicated": YESNO, "enabled": YESNO}
    add("/v3/ips", "get", op("IPs (customers: their dedicated IPs)", _json({"type": "object", "required": ["items", "total_count"]}),
                             params=[_q("dedicated", YESNO)], tag="ips"))
    add("/v3/ips", "post", op("Add an IP (operator)", _json({"type": "object", "required": ["ip"], "properties": {"ip": IP}}),
                              body=_form(ip_fields, ("ip",)), tag="ips"))
    add("/v3/ips/export", "get", op("Dedicated IP assignments as CSV (operator)", {"description": "CSV", "content": {
        "text/csv": {"schema": STR}}}, tag="ips"))
    add("/v3/ips/audit", "get", op("IP audit log (operator)", _json({"type": "object", "required": ["items"]}),
                                   params=[_q("ip"), _q("limit", INT)], tag="ips"))
    add("/v3/ips/{ip}", "get", op("An IP", _json(IP), params=[ip], tag="ips"))
    no_dedicated = {"403": _json(ERROR, "The account's plan has no dedicated IPs (billing on): nothing changed")}
    add("/v3/ips/{ip}", "put", op("Change or assign an IP (operator)", _json(OBJ), params=[ip],
                                  body=_form({**ip_fields, "account_id": SHORT}), tag="ips", responses=no_dedicated))
    add("/v3/ips/{ip}", "delete", op("Remove an IP (operator)", _json(MESSAGE), params=[ip], tag="ips"))
    add("/v3/domains/{domain}/ips", "get", op("A domain's IPs", _json({"type": "object", "required": ["items"]}),
                                              params=[d], tag="ips"))
    add("/v3/domains/{domain}/ips", "post", op("Give a domain an IP or link a pool (operator)", _json(MESSAGE),
                                               params=[d], body=_form({"ip": SHORT, "pool_id": SHORT}), tag="ips",
                                               responses=no_dedicated))
    add("/v3/domains/{domain}/ips/{ip}", "delete", op("Take an IP (or `ip_pool`) from a domain (operator)",
                                                      _json(MESSAGE), params=[d, ip], tag="ips"))
    pool_id = _p("pool_id")
    pool_fields = {"name": SHORT, "description": SHORT, "ips": SHORT, "ip": SHORT, "account_id": SHORT}
    for version in ("v1", "v3"):
        base = f"/{version}/ip_pools"
        add(base, "get", op("IP pools", _json({"type": "object", "required": ["ip_pools"], "properties": {
            "ip_pools": {"type": "array", "items": POOL}}}), tag="ips"))
        add(base, "post", op("Create an IP pool (operator)", _json({"type": "object", "required": ["pool_id"]}),
                             body=_form(pool_fields), tag="ips"))
        add(f"{base}/{{pool_id}}", "get", op("An IP pool", _json(POOL), params=[pool_id], tag="ips"))
        add(f"{base}/{{pool_id}}", "patch", op("Change an IP pool (operator)", _json(MESSAGE), params=[pool_id],
                                               body=_form({"name": SHORT, "description": SHORT, "add_ip": SHORT,
                                                           "remove_ip": SHORT}), tag="ips"))
        add(f"{base}/{{pool_id}}", "delete", op("Delete an IP pool (operator)", _json(MESSAGE),
                                                params=[pool_id, _q("ip"), _q("pool_id")], tag="ips"))
    add("/v3/ip_warmups", "get", op("Warm-ups", _json({"type": "object", "required": ["items"]}), tag="ips"))
    add("/v3/ip_warmups/{ip}", "get", op("An IP's warm-up", _json(OBJ), params=[ip], tag="ips"))
    add("/v3/ip_warmups/{ip}", "post", op("Start a warm-up (operator)", _json(MESSAGE), params=[ip],
                                          body=_form({"plan": SHORT}), tag="ips"))
    add("/v3/ip_warmups/{ip}", "delete", op("Stop a warm-up (operator)", _json(MESSAGE), params=[ip], tag="ips"))
    # the account's audit log (users, invitations, sessions, second factor)
    add("/v3/audit-log", "get", op(
        "The account's audit log, newest first; `format=csv` or `jsonl` downloads all of it",
        {"description": "entries, or the export", "content": {
            "application/json": {"schema": {"type": "object", "required": ["items", "paging"]}},
            "text/csv": {"schema": STR}, "application/x-ndjson": {"schema": STR}}},
        params=[_q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}), _q("before", {"type": "integer", "minimum": 1}),
                _q("action"), _q("actor"), _q("format", {"type": "string", "enum": ["json", "csv", "jsonl"]})],
        tag="accounts"))
    add("/v1/account/export", "get", op(
        "The account's whole data without secrets or message bodies, as a streamed JSON-lines archive"
        " (a header line, one line per row by section, an end line with the counts); admin keys only",
        {"description": "the archive (docs/privacy.md, Account lifecycle)",
         "content": {"application/x-ndjson": {"schema": STR}}}, tag="accounts"))
    # billing
    add("/v1/billing/stripe/webhook", "post", op(
        "Stripe's webhook events (public: verified by the Stripe-Signature header; each event applied once)",
        _json({"type": "object", "required": ["received", "result"], "properties": {
            "received": {"type": "boolean"},
            "result": {"type": "string", "enum": ["applied", "duplicate", "stale", "ignored"]}}}),
        params=[{"name": "Stripe-Signature", "in": "header", "required": True, "schema": STR}],
        body={"required": True, "content": {"application/json": {"schema": OBJ}}}, public=True,
        responses={"400": _json(ERROR, "Missing or invalid signature: nothing changed"),
                   "413": _json(ERROR, "Too large")}, tag="billing"))
    # regions
    add("/v1/regions/lookup", "post", op(
        "A peer region asks whether a login is known here (public: signed with ENVOI_ROUTING_SECRET; only "
        "a keyed hash of the login is sent, nothing is stored)",
        _json({"type": "object", "required": ["known"], "properties": {"known": {"type": "boolean"}}}),
        params=[{"name": "X-Envoi-Timestamp", "in": "header", "required": True, "schema": STR},
                {"name": "X-Envoi-Signature", "in": "header", "required": True, "schema": STR}],
        body={"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["kind", "digest"],
            "properties": {"kind": {"type": "string", "enum": ["smtp", "user"]}, "digest": STR}}}}},
        public=True, responses={"401": _json(ERROR, "Missing, stale or invalid signature, or routing off"),
                                "413": _json(ERROR, "Too large")}, tag="regions"))
    # system
    add("/healthz", "get", op("Health", _json({"type": "object", "required": ["status"]}), public=True, tag="system"))
    add("/readyz", "get", op("Readiness: Postgres and Redis answer", _json({
        "type": "object", "required": ["status", "checks"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}, "checks": {"type": "object"}}}),
        public=True, responses={"503": _json({"type": "object", "required": ["status", "checks"]},
                                             "A store does not answer (checks say which)")}, tag="system"))
    add("/openapi.json", "get", op("This description", _json({"type": "object", "required": ["openapi", "paths"]}),
                                   public=True, tag="system"))
    # API keys (admin keys only)
    # inbound routes
    route = {"type": "object", "required": ["id", "priority", "expression", "actions", "created_at"],
             "properties": {"id": STR, "priority": INT, "description": STR, "expression": STR,
                            "actions": {"type": "array", "items": STR}, "created_at": STR}}
    route_fields = {"priority": INT, "description": {"type": "string", "maxLength": 4096},
                    "expression": {"type": "string", "maxLength": 4096},
                    "action": {"type": "array", "items": {"type": "string", "maxLength": 4096}, "maxItems": 20}}
    add("/v3/routes", "get", op("The account's inbound routes, by priority (lower first)", _json(
        {"type": "object", "required": ["total_count", "items"],
         "properties": {"total_count": INT, "items": {"type": "array", "items": route}}}),
        params=[_q("skip", INT), _q("limit", INT)], tag="routes"))
    add("/v3/routes", "post", op(
        "Create a route: a filter (match_recipient, match_header, catch_all) and its actions (forward, store,"
        " stop)", _json({"type": "object", "required": ["message", "route"],
                         "properties": {"message": STR, "route": route}}),
        body=_form(route_fields, ("expression", "action")), tag="routes"))
    add("/v3/routes/{route_id}", "get", op("One route", _json(
        {"type": "object", "required": ["route"], "properties": {"route": route}}),
        params=[_p("route_id")], tag="routes"))
    add("/v3/routes/{route_id}", "put", op("Change a route's priority, description, expression or actions",
                                           _json({**route, "properties": {**route["properties"], "message": STR}}),
                                           params=[_p("route_id")], body=_form(route_fields), tag="routes"))
    add("/v3/routes/{route_id}", "delete", op("Delete a route", _json(
        {"type": "object", "required": ["message", "id"], "properties": {"message": STR, "id": STR}}),
        params=[_p("route_id")], tag="routes"))
    add("/v1/keys", "get", op("List the account's API keys (never their secrets)", _json(
        {"type": "object", "required": ["total_count", "items"],
         "properties": {"total_count": INT, "items": {"type": "array", "items": KEY}}}),
        params=[_q("domain_name"), _q("kind", {"type": "string", "enum": ["domain", "user"]})], tag="keys"))
    add("/v1/keys", "post", op("Create an API key; the reply holds its secret, shown this once", _json(
        {"type": "object", "required": ["key"], "properties": {"message": STR, "key": {
            **KEY, "required": [*KEY["required"], "secret"], "properties": {**KEY["properties"], "secret": STR}}}}),
        body=_form({"role": {"type": "string", "enum": ["admin", "developer", "sending", "basic"]},
                    "kind": {"type": "string", "enum": ["domain", "user"]}, "domain_name": SHORT,
                    "description": SHORT, "expiration": SHORT}, ("role",)), tag="keys"))
    add("/v1/keys/{key_id}", "delete", op("Delete an API key: it stops working at once", _json(MESSAGE),
                                          params=[_p("key_id")], tag="keys"))
    _dkim(add, d)
    return paths


def document() -> dict:
    """The whole OpenAPI document (a fresh copy each call: callers may change it)."""
    return copy.deepcopy(_DOCUMENT)


_DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Envoi HTTP API", "version": "3",
             "description": "Mailgun-compatible transactional email API. Basic auth `api:KEY`; every error "
                            "is `{\"message\": \"...\"}`. A parent account's key acts for one of its "
                            "subaccounts on any call with `X-Mailgun-On-Behalf-Of: <subaccount id>`."},
    "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
                   "schemas": {"Error": ERROR}},
    "security": [{"basic": []}],
    "paths": _paths(),
}
_BODY = json.dumps(_DOCUMENT).encode()


class OpenApiDocument:
    """GET /openapi.json: public, like the docs it feeds."""

    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _BODY


def markdown(doc: dict | None = None) -> str:
    """A route table for docs/api.md, generated from the description."""
    doc = doc or _DOCUMENT
    lines = ["# HTTP API", "", "Generated from `envoi/api/openapi.py` (served at `GET /openapi.json`) by",
             "`python -m envoi.api.openapi --markdown > docs/api.md`. Errors are `{\"message\": \"...\"}`.", "",
             "| method | path | what | parameters |", "| --- | --- | --- | --- |"]
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            body = operation.get("requestBody", {}).get("content", {})
            fields = sorted({f for c in body.values() for f in c["schema"].get("properties", {})})
            listed = ", ".join(f"`{n}`" for n in names + fields)
            public = " (no auth)" if operation.get("security") == [] else ""
            lines.append(f"| {method.upper()} | `{path}` | {operation['summary']}{public} | {listed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown() if "--markdown" in sys.argv else json.dumps(_DOCUMENT, indent=2) + "\n")
