"""The gateway's TOML configuration: the documented example loads, and mistakes say where they are. No servers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load, parse

REPO = Path(__file__).resolve().parents[2]


def documented_example(tmp_path: Path) -> Path:
    """The gateway.toml in docs/gateway.md, as a newcomer would copy it, with its password files."""
    text = (REPO / "docs" / "gateway.md").read_text()
    example = re.search(r"```toml\n(# /etc/mqtt-saas-gateway/gateway.toml.*?)```", text, re.S)
    assert example, "docs/gateway.md has no gateway.toml example"
    config = example.group(1).replace("/etc/mqtt-saas-gateway/", "").replace("/var/lib/mqtt-saas-gateway/", "")
    for name in re.findall(r'password_file = "([^"]+)"', config):
        (tmp_path / name).write_text("s3cret-from-the-api\n")
    (tmp_path / "broker-ca.crt").write_text("")
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    return path


def test_the_documented_example_loads(tmp_path):
    config = load(documented_example(tmp_path))
    assert config.tenant == "acme"
    assert config.devices == ["meter-01", "plc-01", "gateway-01"]
    meter, plc = config.modbus[0], config.opcua[0]
    assert (meter.device, meter.host, meter.unit_id, meter.poll_interval_s) == ("meter-01", "192.168.10.20", 1, 5.0)
    assert {p.metric: p.unit for p in meter.points}["energy_import"] == "kWh"
    assert [n.metric for n in plc.nodes if n.writable] == ["target_rpm"]
    assert config.credentials["meter-01"].username == "acme.meter-01"
    assert config.credentials["meter-01"].password == "s3cret-from-the-api"
    assert "s3cret" not in repr(config)


def test_check_prints_a_summary_without_connecting(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(documented_example(tmp_path)), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "modbus 192.168.10.20:502 unit 1 -> meter-01" in done.stdout


BASE = {
    "gateway": {"tenant": "acme"},
    "broker": {"host": "broker.example.com"},
    "devices": {"m-1": {"password": "p"}},
    "modbus": [{"device": "m-1", "host": "10.0.0.5", "points": [{"metric": "a", "address": 0}]}],
}


def with_(path: str, value) -> dict:
    """BASE with one key set, by a dotted path (list indexes as numbers)."""
    import copy

    config = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (with_("modbus.0.poll_intervall_s", 10), r"modbus\[0\]: unknown key\(s\) poll_intervall_s"),
        (with_("modbus.0.points.0.type", "int64"), r"points\[0\]\.type: 'int64' is not one of int16"),
        (with_("modbus.0.points.0.table", "input") | {}, None),
        (with_("gateway.tenant", "Acme"), r"gateway\.tenant: 'Acme' is not a valid tenant slug"),
        (with_("modbus.0.points.0.metric", "temp C"), "not a valid metric name"),
        (with_("modbus.0.device", "m-2"), r"devices\.m-2: missing"),
        (with_("modbus.0.points.0.scale", 0), "cannot be 0"),
        (with_("publish.resend_window_s", 5), "must cover the broker's autosave_interval"),
        (with_("publish.max_age_days", 30), "below the drain's 30 days"),
        (with_("publish.max_records", 1001), "outside 1..1000"),
        (with_("buffer.when_full", "block"), "not one of drop_oldest, drop_newest"),
        (with_("devices.m-1", {}), r"devices\.m-1\.password: required"),
    ],
)
def test_mistakes_say_where_and_why(config, message, tmp_path):
    if message is None:
        parse(config, tmp_path)
        return
    with pytest.raises(ConfigError, match=message):
        parse(config, tmp_path)


def test_read_only_points_cannot_be_writable_and_metrics_are_not_read_twice(tmp_path):
    config = with_("modbus.0.points", [{"metric": "a", "table": "input", "address": 0, "writable": True}])
    with pytest.raises(ConfigError, match="read-only in Modbus"):
        parse(config, tmp_path)
    config = with_("modbus.0.points", [{"metric": "a", "address": 0}, {"metric": "a", "address": 1}])
    with pytest.raises(ConfigError, match="already read by modbus\\[0\\]"):
        parse(config, tmp_path)
    config = with_("modbus.0.points", [{"metric": "cmd_ack", "address": 0}])
    with pytest.raises(ConfigError, match="reserved for command acknowledgements"):
        parse(config, tmp_path)
    config = with_("modbus.0.points", [{"metric": "on", "table": "coil", "address": 0, "scale": 2}])
    with pytest.raises(ConfigError, match="no scale or offset"):
        parse(config, tmp_path)
