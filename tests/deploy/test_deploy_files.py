"""infra/deploy: the systemd units pass `systemd-analyze verify`, and the units, the compose file and the
Kubernetes manifests run the same commands with the same arguments and only documented settings."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from envoi import cli
from envoi.cli import main
from tests.support.prometheus import DEPLOY

SYSTEMD = DEPLOY / "systemd"
BINARY = "/opt/envoi/bin/envoi"
SETTINGS = Path(__file__).resolve().parents[2] / "envoi" / "infra" / "settings.py"
# Every long-running process `envoi --help` lists, but the dev-only ones, plus the one-off migration:
# a new process fails these tests until it has a unit, a compose service and a manifest.
PROCESSES = (set(cli.PROCESSES) - {"up", "sink"}) | {"migrate"}


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def process_of(args: list[str]) -> str:
    """The envoi command an argument list runs (`--region eu relay ...` runs relay)."""
    return next(a for a in args if a in PROCESSES)


def normalized(args: list[str]) -> list[str]:
    """What must agree everywhere: the same options and values, except where each listens (a host's
    loopback behind its reverse proxy, a container's every address) and the relay unit's region (%i)."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--bind":
            out += ["--bind", args[i + 1].rpartition(":")[2] if ":" in args[i + 1] else "ADDR"]
            skip = True
            continue
        out.append("REGION" if i and args[i - 1] == "--region" else arg)
    return out


def units() -> dict[str, dict]:
    found = {}
    for path in sorted(SYSTEMD.glob("*.service")):
        sections = unit_sections(path)
        service = dict(sections["Service"])
        args = shlex.split(service["ExecStart"])
        assert args[0] == BINARY, path.name
        env = {v.partition("=")[0] for k, v in sections["Service"] if k == "Environment"}
        found[process_of(args[1:])] = {"path": path, "args": args[1:], "env": env, "service": sections["Service"]}
    return found


def compose() -> dict[str, dict]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return {process_of(svc["command"]): {"args": svc["command"], "env": set(svc.get("environment", {})),
                                         "svc": svc} for svc in doc["services"].values()}


def manifests() -> dict[str, dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] not in ("Deployment", "DaemonSet", "Job"):
                continue
            spec = doc["spec"]["template"]["spec"]
            (container,) = spec["containers"]
            found[process_of(container["args"])] = {"args": container["args"], "kind": doc["kind"], "spec": spec,
                                                    "env": {e["name"] for e in container.get("env", [])}}
    return found


def documented_settings() -> set[str]:
    """Every variable name settings.py documents in a `#:` comment (docs/settings.md is made from them)."""
    names = set()
    for line in SETTINGS.read_text().splitlines():
        if line.strip().startswith("#:"):
            names.update(re.findall(r"\b(?:ENVOI_[A-Z0-9_]+|[A-Z]+_URL|PROMETHEUS_MULTIPROC_DIR)\b", line))
    return names


def test_every_process_has_a_unit_a_compose_service_and_a_manifest():
    assert set(units()) == PROCESSES
    assert set(compose()) == PROCESSES
    assert set(manifests()) == PROCESSES


def test_units_compose_and_manifests_run_the_same_commands():
    systemd, composed, kube = units(), compose(), manifests()
    for name in PROCESSES:
        expected = normalized(systemd[name]["args"])
        assert normalized(composed[name]["args"]) == expected, name
        assert normalized(kube[name]["args"]) == expected, name


def test_every_argument_is_an_option_of_the_command():
    from click.testing import CliRunner

    for name, unit in units().items():
        args = [a.replace("%i", "eu") for a in unit["args"]]
        # --help after the command's own options: click rejects an unknown option before printing help
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_the_same_settings_are_given_and_every_name_is_documented():
    systemd, composed, kube = units(), compose(), manifests()
    documented = documented_settings()
    example = {line.partition("=")[0] for line in (DEPLOY / "envoi.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    for name in PROCESSES:
        # a process group's metrics directory is set wherever the process runs several processes
        assert ("PROMETHEUS_MULTIPROC_DIR" in systemd[name]["env"]) == ("PROMETHEUS_MULTIPROC_DIR" in
                                                                        composed[name]["env"])
        assert ("PROMETHEUS_MULTIPROC_DIR" in systemd[name]["env"]) == ("PROMETHEUS_MULTIPROC_DIR" in
                                                                        kube[name]["env"])
    used = example | {n for group in (systemd, composed, kube) for p in group.values() for n in p["env"]}
    assert used - documented == set()
    assert {"ENVOI_SECRET_KEY", "ENVOI_LOOKUP_KEY", "DATABASE_URL", "REDIS_URL", "ENVOI_METRICS_HOST"} <= example


def test_relays_use_the_hosts_network():
    kube = manifests()["relay"]
    assert kube["kind"] == "DaemonSet" and kube["spec"]["hostNetwork"] is True
    assert compose()["relay"]["svc"]["network_mode"] == "host"


def test_units_are_hardened():
    for name, unit in units().items():
        service = dict(unit["service"])
        assert service["User"] == "envoi", name
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                           ("ProtectHome", "yes")):
            assert service.get(key) == value, (name, key)
    assert dict(units()["migrate"]["service"])["Type"] == "oneshot"


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)", pytrace=False)
    # verify checks that ExecStart's binary exists: point the units at a stand-in for /opt/envoi/bin/envoi.
    stand_in = tmp_path / "envoi"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    paths = []
    for path in SYSTEMD.glob("*.service"):
        name = path.name.replace("@.service", "@eu.service")  # a template is verified as an instance
        (tmp_path / name).write_text(path.read_text().replace(BINARY, str(stand_in)))
        paths.append(str(tmp_path / name))
    result = subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warnings: none allowed


def compose_tool() -> list[str] | None:
    """Docker's compose plugin (`docker compose`), else the standalone `docker-compose` (Debian's package,
    which ./dev installs): `config` needs neither a daemon nor an image."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_reads_the_compose_file(tmp_path):
    """The compose file as Compose itself resolves it (anchors, merges, schema): every service there, with
    the command this file's test reads. Images are not pulled or built: `config` only parses."""
    tool = compose_tool()
    if tool is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (./dev test installs Debian's"
                    " docker-compose)", pytrace=False)
    deploy = tmp_path / "infra" / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(deploy / "envoi.env.example", deploy / "envoi.env")  # env_file: must exist to be read
    result = subprocess.run([*tool, "-f", str(deploy / "compose.yaml"), "config"], capture_output=True, text=True,
                            cwd=deploy, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert {process_of(svc["command"]): svc["command"] for svc in resolved.values()} == {
        name: found["args"] for name, found in compose().items()}


def test_kubernetes_manifests_validate_against_the_api_schemas():
    """Every manifest against the Kubernetes OpenAPI schemas that kubernetes-validate carries (offline),
    strictly: an unknown or misplaced field fails."""
    import kubernetes_validate

    version = kubernetes_validate.utils.latest_version()
    checked = 0
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as ex:
                pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata'].get('name')}: {ex.message} at"
                            f" {'.'.join(map(str, ex.path))}", pytrace=False)
            checked += 1
    assert checked >= len(PROCESSES)
