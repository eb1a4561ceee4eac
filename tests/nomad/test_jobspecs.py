"""Nomad job specs, parsed with a real HCL2 parser (python-hcl2): the parts that matter.

Nomad itself cannot run here. These tests assert what a wrong edit would silently break:
tandem is the wrapper's command, the sidecar is a prestart sidecar in a bridge-mode group,
Nomad's checks ask tandem's /readyz, kill_signal is one tandem stops on, and kill_timeout
outlasts tandem's own stop sequence without exceeding Nomad's default max_kill_timeout. The
tandem config embedded in each `template` is rendered (NOMAD_* values substituted as Nomad's
`env` function would) and validated by the real binary: `tandem check`.

The sidecar's runtime behaviour is simulated in tests/blackbox/nomad.rs.
Run: scripts/test (or `python3 -m pytest tests/nomad` with TANDEM_BIN set).
"""

import os
import pathlib
import re
import subprocess
import tomllib
from pathlib import Path

import hcl2
import pytest
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
NOMAD = ROOT / "nomad"
# Nomad client's default max_kill_timeout: a larger kill_timeout is capped to it.
MAX_KILL_TIMEOUT = 30.0
STOP_SIGNALS = {"SIGTERM", "SIGINT", "SIGQUIT"}

# What Nomad would put in the task's environment (values are examples).
NOMAD_ENV = {
    "NOMAD_PORT_app": "23001",
    "NOMAD_PORT_http": "8080",
    "NOMAD_PORT_admin": "9901",
    "NOMAD_ADDR_http": "10.0.0.5:23002",
    "NOMAD_ADDR_admin": "10.0.0.5:23003",
    "NOMAD_META_app_port": "3000",
    "NOMAD_ALLOC_DIR": "/alloc",
    "NOMAD_SECRETS_DIR": "/tmp/tandem-nomad-test-secrets",
}


def tandem_bin():
    if os.environ.get("TANDEM_BIN"):
        return os.environ["TANDEM_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "tandem")


def load(name):
    opts = SerializationOptions(
        with_comments=False,
        explicit_blocks=False,
        preserve_heredocs=False,
        strip_string_quotes=True,
    )
    with open(NOMAD / name) as f:
        return hcl2.load(f, serialization_options=opts)


def one(blocks):
    """A labelled block list with one entry ([{label: body}]) -> (label, body)."""
    assert len(blocks) == 1, blocks
    ((label, body),) = blocks[0].items()
    return label, body


def tasks(group):
    return {name: body for t in group["task"] for name, body in t.items()}


def seconds(d):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", d.strip())
    assert m, f"unsupported duration {d!r}"
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def render(data):
    """Nomad's template `{{ env "X" }}`, the only template function these specs use."""

    def sub(m):
        assert m.group(1) in NOMAD_ENV, f"no test value for {m.group(1)}"
        return NOMAD_ENV[m.group(1)]

    out = re.sub(r'\{\{\s*env\s+"([A-Za-z0-9_]+)"\s*\}\}', sub, data)
    assert "{{" not in out, f"template function the test cannot render:\n{out}"
    return out


def tandem_check(tmp_path, data):
    """Render the template, run `tandem check` on it; returns the merged config."""
    cfg = tmp_path / "tandem.toml"
    cfg.write_text(render(data))
    # The admin token Nomad would render into the task's secrets dir.
    secrets = pathlib.Path(NOMAD_ENV["NOMAD_SECRETS_DIR"])
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "admin-token").write_text("nomad-test-admin-token-0123456789\n")
    r = subprocess.run(
        [tandem_bin(), "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"tandem check failed:\n{r.stdout}\n{r.stderr}"
    return tomllib.loads(r.stdout)


def tandem_stop_budget(cfg):
    """Worst case of tandem's stop sequence after SIGTERM, in seconds."""
    drain = max(
        (seconds(l.get("drain_timeout", "30s")) for l in cfg["proxy"]["listeners"]),
        default=0.0,
    )
    return (
        seconds(cfg["shutdown"]["delay"])
        + drain
        + seconds(cfg["app"]["stop_timeout"])
        + 2 * seconds(cfg["logs"]["exit_timeout"])
    )


def template_data(task):
    (tpl,) = task["template"]
    assert tpl["destination"] == "local/tandem.toml"
    return tpl["data"]


def assert_readyz_check(group, port="admin"):
    (service,) = group["service"]
    (check,) = service["check"]
    assert check["type"] == "http"
    assert check["path"] == "/readyz"
    assert check["port"] == port
    return service


@pytest.mark.parametrize("spec", ["wrapper.nomad.hcl", "wrapper-docker.nomad.hcl"])
def test_wrapper_runs_tandem_with_checks_and_kill_timeout_above_tandems(spec, tmp_path):
    _, job = one(load(spec)["job"])
    _, group = one(job["group"])
    assert_readyz_check(group)
    (task,) = tasks(group).values()
    assert "lifecycle" not in task, "the wrapper is the main task"
    (config,) = task["config"]
    if task["driver"] == "docker":
        # The image's ENTRYPOINT is tandem (compose/Dockerfile); args go to it.
        assert "entrypoint" not in config and "command" not in config
        assert config["args"] == ["--config", "/local/tandem.toml"]
        assert set(config["ports"]) == {"http", "admin"}
    else:
        assert task["driver"] in ("raw_exec", "exec")
        assert Path(config["command"]).name == "tandem"
        assert config["args"] == ["--config", "local/tandem.toml"]

    merged = tandem_check(tmp_path, template_data(task))
    assert merged["app"]["command"], "tandem wraps a command"
    # The check's port is tandem's admin listener, the service's port its proxy.
    (network,) = group["network"]
    labels = {name for p in network["port"] for name in p}
    assert {"http", "admin"} <= labels
    listener = merged["proxy"]["listeners"][0]
    if task["driver"] == "docker":
        assert merged["admin"]["listen"].endswith(":9901")
        assert listener["listen"].endswith(":8080")
    else:
        assert merged["admin"]["listen"] == NOMAD_ENV["NOMAD_ADDR_admin"]
        assert listener["listen"] == NOMAD_ENV["NOMAD_ADDR_http"]
    assert merged["health"]["readiness"]["target"].endswith("/health")

    assert task["kill_signal"] in STOP_SIGNALS
    kill = seconds(task["kill_timeout"])
    budget = tandem_stop_budget(merged)
    assert budget < kill <= MAX_KILL_TIMEOUT, (budget, kill)


def test_sidecar_is_a_prestart_sidecar_that_tails_proxies_and_checks_the_app(tmp_path):
    _, job = one(load("sidecar.nomad.hcl")["job"])
    _, group = one(job["group"])
    (network,) = group["network"]
    assert network["mode"] == "bridge", "tasks must share the group's namespace"
    assert_readyz_check(group)
    ts = tasks(group)
    assert set(ts) == {"app", "tandem"}
    app, sidecar = ts["app"], ts["tandem"]
    assert "lifecycle" not in app, "the app is the main task"
    (lifecycle,) = sidecar["lifecycle"]
    assert lifecycle == {"hook": "prestart", "sidecar": True}

    merged = tandem_check(tmp_path, template_data(sidecar))
    # Beside the app: no command of its own, it tails the app task's Nomad log files.
    assert not merged["app"]["command"]
    paths = merged["logs"]["tail"]["paths"]
    assert f"/alloc/logs/app.stdout.*" in paths and f"/alloc/logs/app.stderr.*" in paths
    assert merged["logs"]["tail"]["checkpoint"].startswith("/alloc/data/")
    # It proxies the app's port and probes it at the same place.
    app_port = group["meta"][0]["app_port"]
    (config,) = app["config"]
    assert config["args"][config["args"].index("--port") + 1] == app_port
    listener = merged["proxy"]["listeners"][0]
    assert listener["upstream"] == f"127.0.0.1:{app_port}"
    assert merged["health"]["readiness"]["target"] == f"http://127.0.0.1:{app_port}/health"
    ports = {name: body for p in network["port"] for name, body in p.items()}
    assert listener["listen"].endswith(f":{ports['http']['to']}")
    assert merged["admin"]["listen"].endswith(f":{ports['admin']['to']}")

    # Stop order: the app (leader) first, tandem last; its stop fits in its kill_timeout.
    assert app.get("leader") is True
    assert seconds(group["shutdown_delay"]) > 0, "lets in-flight requests finish"
    assert sidecar["kill_signal"] in STOP_SIGNALS
    kill = seconds(sidecar["kill_timeout"])
    assert tandem_stop_budget(merged) < kill <= MAX_KILL_TIMEOUT
    assert seconds(app["kill_timeout"]) <= MAX_KILL_TIMEOUT
