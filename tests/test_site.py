"""The site file: loads, and mistakes are named by key."""

from __future__ import annotations

import pytest
import yaml
from conftest import SITE_FILE

from aifactory.site import SiteError, load_site


def test_the_shipped_site_file_is_valid(site):
    assert set(site.partitions) == {"gpu", "cpu"}
    assert site.default_partition.name == "gpu"
    assert {g.name: g.count for g in site.gpu_types.values()} == {"h100": 2, "a100": 2}
    # the quarter reserved for regional partners
    assert site.accounts["university"].shares == 75
    assert site.accounts["regional"].shares == 25
    assert site.accounts["regional-energy"].parent == "regional"
    assert site.demo_users["partner1"].account == "regional-energy"


def mutated(tmp_path, change):
    raw = yaml.safe_load(SITE_FILE.read_text())
    change(raw)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: r["partitions"]["gpu"].update(max_hours="eight"), "partitions.gpu.max_hours: expected int"),
        (lambda r: r["partitions"]["gpu"].update(colour="red"), "partitions.gpu: unknown key(s) colour"),
        (lambda r: r["gpu_types"].update({"H100 SXM": {"count": 1}}), "gpu_types.H100 SXM"),
        (lambda r: r["limits"]["gpus"].update(default=7), "limits.gpus: need min <= default <= max"),
        (lambda r: r["demo_users"]["student1"].update(account="nope"), "demo_users.student1: unknown account 'nope'"),
        (lambda r: r["demo_users"]["student1"].update(qos=["turbo"]), "demo_users.student1.qos: unknown QOS 'turbo'"),
        (lambda r: r.pop("spawn"), "site.spawn: missing"),
        (lambda r: r.update(colour=1), "site: unknown key(s) colour"),
        (lambda r: r["authentication"].update(method="ldap"), "authentication.method"),
        (lambda r: r["accounts"]["regional"].update(shares=True), "accounts.regional.shares: expected int"),
    ],
)
def test_mistakes_name_the_key(tmp_path, change, message):
    with pytest.raises(SiteError) as error:
        load_site(mutated(tmp_path, change))
    assert message in str(error.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(SiteError, match="not found"):
        load_site(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("partitions: [\n")
    with pytest.raises(SiteError, match="not valid YAML"):
        load_site(tmp_path / "bad.yaml")
