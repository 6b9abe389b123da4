"""The one permission table: Mailgun's role semantics, and no silent pass for a typo."""

import pytest

from envoi.accounts.errors import Forbidden
from envoi.accounts.roles import ACTIONS, allowed, require


def test_admin_may_do_everything():
    assert all(allowed("admin", action) for action in ACTIONS)


def test_developer_may_do_all_but_users_and_billing():
    assert {a for a in ACTIONS if not allowed("developer", a)} == {"manage_users", "manage_billing", "read_audit_log",
                                                                   "export_account"}  # the account's whole data


@pytest.mark.parametrize(("role", "may"), [
    ("support", {"read_logs", "read_stats", "manage_suppressions"}),
    ("analyst", {"read_logs", "read_stats"}),
    ("billing", {"manage_billing"}),
    ("sending", set()),  # an API key role, not a user role: nothing here
    ("nobody", set()),
])
def test_narrow_roles(role, may):
    assert {a for a in ACTIONS if allowed(role, a)} == may


def test_an_unknown_action_is_an_error_not_a_denial():
    with pytest.raises(ValueError, match="unknown action"):
        allowed("admin", "manage_user")


def test_require_raises_forbidden_with_403():
    require("billing", "manage_billing")
    with pytest.raises(Forbidden) as caught:
        require("analyst", "send")
    assert caught.value.http_status == 403
