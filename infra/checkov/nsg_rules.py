"""Custom checkov checks on NSG rules, for the Bicep templates in infra/.

CKV_MQTTSAAS_1: no rule allows inbound TCP to 1883 (plain-text MQTT), from anywhere. The broker has no plain-text
listener (shared/broker/contract.py render_mosquitto_conf renders one TLS listener), so such a rule is always a mistake.
No built-in check knows MQTT.

CKV_MQTTSAAS_2: no rule allows inbound SSH (22) from the Internet. Checkov 3.3.30's own CKV_AZURE_10 compares the
source case-sensitively with a short list: it fails '*' but passes 'Internet' (Azure's service tag) and
'0.0.0.0/0' (measured). This one treats '*', 'Internet', 'Any', '0.0.0.0', '0.0.0.0/0' and '::/0' alike.

Run: checkov -d infra --framework bicep --skip-download --external-checks-dir infra/checkov
"""

from __future__ import annotations

import re
from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

INTERNET_SOURCES = {"*", "internet", "any", "0.0.0.0", "0.0.0.0/0", "::/0"}
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _opens_port(port_range: object, port: int) -> bool:
    text = str(port_range).strip()
    match = _RANGE.match(text)
    return text in ("*", str(port)) or bool(match and int(match.group(1)) <= port <= int(match.group(2)))


def allows_inbound_tcp_to(properties: dict[str, Any], port: int) -> bool:
    """An Allow, Inbound, TCP (or any protocol) rule whose destination ports include `port`."""
    if str(properties.get("access", "")).lower() != "allow":
        return False
    if str(properties.get("direction", "")).lower() != "inbound":
        return False
    if str(properties.get("protocol", "*")).lower() not in ("tcp", "*"):
        return False
    ports = [properties.get("destinationPortRange"), *_as_list(properties.get("destinationPortRanges"))]
    return any(p is not None and _opens_port(p, port) for p in ports)


def from_internet(properties: dict[str, Any]) -> bool:
    sources = [properties.get("sourceAddressPrefix"), *_as_list(properties.get("sourceAddressPrefixes"))]
    return any(str(s).strip().lower() in INTERNET_SOURCES for s in sources if s is not None)


class _NSGRuleCheck(BaseResourceCheck):
    """Fails an NSG (inline rules) or a securityRules child resource when one of its rules is_bad."""

    def __init__(self, name: str, check_id: str) -> None:
        super().__init__(
            name=name,
            id=check_id,
            categories=(CheckCategories.NETWORKING,),
            supported_resources=(
                "Microsoft.Network/networkSecurityGroups",
                "Microsoft.Network/networkSecurityGroups/securityRules",
            ),
        )

    def is_bad(self, properties: dict[str, Any]) -> bool:
        raise NotImplementedError

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        properties = conf.get("properties")
        if not isinstance(properties, dict):
            return CheckResult.PASSED
        if self.entity_type == "Microsoft.Network/networkSecurityGroups":
            rules = [r.get("properties", {}) for r in _as_list(properties.get("securityRules")) if isinstance(r, dict)]
        else:
            rules = [properties]
        return CheckResult.FAILED if any(isinstance(r, dict) and self.is_bad(r) for r in rules) else CheckResult.PASSED


class NSGRulePlainMqttBlocked(_NSGRuleCheck):
    def __init__(self) -> None:
        super().__init__("Ensure no NSG rule allows inbound plain-text MQTT (1883)", "CKV_MQTTSAAS_1")

    def is_bad(self, properties: dict[str, Any]) -> bool:
        return allows_inbound_tcp_to(properties, 1883)


class NSGRuleSSHNotFromInternet(_NSGRuleCheck):
    def __init__(self) -> None:
        super().__init__(
            "Ensure no NSG rule allows inbound SSH (22) from the Internet, whatever the spelling", "CKV_MQTTSAAS_2"
        )

    def is_bad(self, properties: dict[str, Any]) -> bool:
        return allows_inbound_tcp_to(properties, 22) and from_internet(properties)


checks = [NSGRulePlainMqttBlocked(), NSGRuleSSHNotFromInternet()]
