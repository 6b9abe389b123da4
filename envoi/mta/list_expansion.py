"""A message to a mailing list's address goes to the list's subscribed members, one copy each.

The API composes each member's copy from the send fields (envoi.mta.compose, with the ListExpansion
of each list named in `to`); SMTP submission fills each member's copy in the message's raw bytes
(expand_mime, as its batch sending does). Either way a send reads the account's list addresses from
a cache and each list's members in one query; the copies are committed in the accept's one
transaction, so a 200 or 250 means every member's copy is queued. Suppressions still apply: the relay
checks them per recipient, so a suppressed member's copy fails as any suppressed recipient's does.

Access levels govern mail arriving from outside (inbound: envoi.mta.routes.service.Receiving checks
them at RCPT and re-submits an accepted post here through Intake); sends through the API or SMTP
submission are the account's own and always allowed, as Mailgun documents for the API key owner.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from envoi.lists.service import MailingLists
from envoi.mta import substitution
from envoi.mta.compose import MAX_EXPANDED_BYTES, Composed, Draft, ListExpansion
from envoi.mta.errors import InvalidMessage, MessageTooLarge
from envoi.mta.tracking import Tracking


class ListExpander:
    def __init__(self, lists: MailingLists, tracking: Tracking):
        self.lists = lists
        self.tracking = tracking

    def expansions(self, domain: dict, addresses: list[str]) -> dict[str, ListExpansion]:
        """The mailing lists of the sending domain's account among these addresses, with their members."""
        account_id = domain["account_id"]
        found = self.lists.lists_among(account_id, addresses)
        out = {}
        for address in found:
            row, members = self.lists.recipients(account_id, address)
            out[address] = ListExpansion(address, members,
                                         reply_to=address if row["reply_preference"] == "list" else None,
                                         substituter=functools.partial(self._substituter, domain, address))
        return out

    def _substituter(self, domain: dict, list_address: str, message_id: str, member: dict) -> substitution.Substituter:
        url = self.tracking.list_unsubscribe_url(domain, message_id, member["address"], list_address)
        return substitution.MemberSubstituter(member["address"], substitution.member_variables(member), url)

    def expand_mime(self, domain: dict, draft: Draft) -> Draft:
        """SMTP: replace each list among a copy's recipients with one filled-in copy per subscribed member."""
        addresses = [r for copy in draft.copies for r in copy.recipients]
        expansions = self.expansions(domain, addresses)
        if not expansions:
            return draft
        copies: list[Composed] = []
        total = 0
        for copy in draft.copies:
            rest = [r for r in copy.recipients if r.lower() not in expansions]
            if rest:
                copies.append(Composed(rest, copy.mime, copy.headers))
            for rcpt in copy.recipients:
                expansion = expansions.get(rcpt.lower())
                if expansion is None:
                    continue
                mime = _with_list_headers(copy.mime, expansion.reply_to)
                if len(mime) * len(expansion.members) + total > MAX_EXPANDED_BYTES:
                    raise MessageTooLarge(f"the message times the {len(expansion.members)} members of {rcpt} exceeds"
                                          f" {MAX_EXPANDED_BYTES} bytes; send a smaller message")
                for member in expansion.members:
                    sub = self._substituter(domain, expansion.address, draft.message_id, member)
                    filled = mime.replace(substitution.LIST_UNSUBSCRIBE.encode(), sub.unsubscribe_url.encode())
                    filled = substitution.substitute_mime(filled, member["address"], sub.variables)
                    copies.append(Composed([member["address"]], filled, copy.headers))
                    total += len(filled)
        if not copies:
            raise InvalidMessage("the mailing list has no subscribed members: nothing to send")
        return replace(draft, copies=copies, expanded=True)


def _with_list_headers(mime: bytes, reply_to: str | None) -> bytes:
    """Reply-To: the list (reply_preference "list"), and the member's one-click List-Unsubscribe (filled in
    per member), unless the message has its own."""
    end = mime.find(b"\r\n\r\n")
    head = b"\r\n" + (mime[: end + 2] if end >= 0 else mime).lower()
    added = b""
    if reply_to and b"\r\nreply-to:" not in head:
        added += f"Reply-To: {reply_to}\r\n".encode()
    if b"\r\nlist-unsubscribe:" not in head:
        added += (f"List-Unsubscribe: <{substitution.LIST_UNSUBSCRIBE}>\r\n"
                  "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode()
    return added + mime
