"""Custom checkov check CKV_MQTTSAAS_1: no NSG rule allows inbound TCP to 1883 (plain-text MQTT) from anywhere.

The broker has no plain-text listener (shared/broker_contract.render_mosquitto_conf renders one TLS listener), so
a rule opening 1883 is always a mistake: credentials and readings would cross the Internet in clear text if a
listener were ever added. Checkov's own CKV_AZURE_10/9/160 cover 22/3389/80 only, and no built-in check knows MQTT.

Run: checkov -d infra --framework bicep --skip-download --external-checks-dir infra/checkov
"""
from __future__ import annotations

import re
from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

PLAIN_MQTT_PORT = 1883
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def _opens_port(port_range: object, port: int) -> bool:
    text = str(port_range).strip()
    if text == "*" or text == str(port):
        return True
    match = _RANGE.match(text)
    return bool(match and int(match.group(1)) <= port <= int(match.group(2)))


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def rule_allows_plain_mqtt(properties: dict[str, Any]) -> bool:
    """An Allow, Inbound, TCP (or any protocol) rule whose destination ports include 1883, from any source."""
    if str(properties.get("access", "")).lower() != "allow":
        return False
    if str(properties.get("direction", "")).lower() != "inbound":
        return False
    if str(properties.get("protocol", "*")).lower() not in ("tcp", "*"):
        return False
    ports = [properties.get("destinationPortRange"), *_as_list(properties.get("destinationPortRanges"))]
    return any(p is not None and _opens_port(p, PLAIN_MQTT_PORT) for p in ports)


class NSGRulePlainMqttBlocked(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure no NSG rule allows inbound plain-text MQTT (1883)",
            id="CKV_MQTTSAAS_1",
            categories=(CheckCategories.NETWORKING,),
            supported_resources=(
                "Microsoft.Network/networkSecurityGroups",
                "Microsoft.Network/networkSecurityGroups/securityRules",
            ),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        properties = conf.get("properties")
        if not isinstance(properties, dict):
            return CheckResult.PASSED
        if self.entity_type == "Microsoft.Network/networkSecurityGroups":
            rules = [r.get("properties", {}) for r in _as_list(properties.get("securityRules")) if isinstance(r, dict)]
        else:
            rules = [properties]
        if any(isinstance(r, dict) and rule_allows_plain_mqtt(r) for r in rules):
            return CheckResult.FAILED
        return CheckResult.PASSED


check = NSGRulePlainMqttBlocked()
