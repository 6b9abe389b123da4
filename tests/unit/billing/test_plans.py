"""Plans from TOML: the packaged defaults, an operator's own file, and clear refusals."""

import pytest

from envoi.billing import plans
from envoi.billing.errors import PlansInvalid


def test_the_packaged_plans_start_with_a_free_tier_like_mailguns():
    offered = plans.load()
    free = offered.get("free")
    assert offered.default == "free" and free.daily_cap == 100 and free.included_per_month == 3000
    assert free.monthly_cap == 3000 and not free.paid  # no overage sold: the included volume is a hard cap
    scale = offered.get("scale")
    assert scale.paid and scale.monthly_cap is None and scale.overage_per_1000 == 110 and scale.dedicated_ips
    assert offered.get("no-longer-offered") == free  # held to the default plan's terms


def test_an_operators_file_replaces_the_defaults(tmp_path):
    path = tmp_path / "plans.toml"
    path.write_text('default = "starter"\ncurrency = "EUR"\n[plans.starter]\nincluded_per_month = 500\n'
                    'daily_cap = 0\n')
    offered = plans.load(path)
    starter = offered.get("starter")
    assert offered.currency == "eur" and starter.daily_cap is None and starter.log_retention_days == 30
    assert [p.name for p in offered] == ["starter"]


@pytest.mark.parametrize("text, says", [
    ("[plans.a]\nincluded_per_month = -1\n", "whole number"),
    ("[plans.a]\nincluded_per_month = 10\ncolour = 'red'\n", "unknown fields: colour"),
    ("[plans.a]\ndaily_cap = 5\n", "needs included_per_month"),
    ('default = "b"\n[plans.a]\nincluded_per_month = 1\n', "default plan 'b'"),
    ("plans = 3\n", "no [plans.<name>] tables"),
    ("[plans.a\n", "plans.toml"),
])
def test_a_bad_file_is_refused_with_what_is_wrong(tmp_path, text, says):
    path = tmp_path / "plans.toml"
    path.write_text(text)
    with pytest.raises(PlansInvalid, match=says.replace("[", r"\[").replace(".", r"\.")):
        plans.load(path)


def test_a_missing_file_is_named():
    with pytest.raises(PlansInvalid, match="cannot read the plans file /nonexistent"):
        plans.load("/nonexistent/plans.toml")
