"""Redeploying over an existing broker VM, offline (pycep): with brokerVmExists the VM is not in the deployment (Azure
refuses any change of an existing VM's customData, PropertyChangeNotAllowed), it is referenced as `existing`, and the
network, the key vault's grant to the VM's identity, the CPU alert and every output still resolve; the function app
is deployed the same either way."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

INFRA = Path(__file__).resolve().parents[2] / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)  # type: ignore[no-any-return]


def broker_vm() -> dict[str, Any]:
    return parse(MODULES / "brokerVm.bicep")


def accessor(*parts: str) -> Any:
    """pycep's form of a.b.c."""
    if len(parts) == 1:
        return parts[0]
    return {"operator": {"type": "property_accessor", "operands": {"operand_1": parts[0],
                                                                   "operand_2": accessor(*parts[1:])}}}


def holds(condition: Any, params: dict[str, bool]) -> bool:
    """The two conditions the broker module uses: `brokerVmExists` and `!brokerVmExists`."""
    if isinstance(condition, str):
        return params[condition]
    operator = condition["operator"]
    assert operator["type"] == "not", condition
    return not params[operator["operands"]["bool_value"]]


def deployed(declarations: dict[str, Any], params: dict[str, bool]) -> dict[str, Any]:
    """Name -> declaration of what a deployment with these parameter values creates or updates."""
    chosen = {}
    for name, declaration in declarations.items():
        if declaration.get("existing"):
            continue
        config = declaration["config"]
        if "condition" not in config or holds(config["condition"], params):
            chosen[name] = declaration
    return chosen


def test_main_declares_broker_vm_exists_off_by_default_and_passes_it_on() -> None:
    parameter = parse(MAIN)["parameters"]["brokerVmExists"]
    assert parameter["type"] == "bool" and parameter["default"] is False
    description = parameter["decorators"][0]["argument"]
    assert description.startswith("Optional.") and "PropertyChangeNotAllowed" in description
    assert parse(MAIN)["modules"]["brokerVm"]["config"]["params"]["brokerVmExists"] == "brokerVmExists"
    assert broker_vm()["parameters"]["brokerVmExists"]["default"] is False
    # a module main.bicep always deploys: its network interface and outputs are there either way
    assert "condition" not in parse(MAIN)["modules"]["brokerVm"]["config"]


@pytest.mark.parametrize("exists", [False, True])
def test_the_vm_is_in_the_deployment_only_while_it_does_not_exist(exists: bool) -> None:
    # GIVEN brokerVmExists WHEN the broker module deploys
    params = {"brokerVmExists": exists}
    modules = deployed(broker_vm().get("modules", {}), params)
    resources = deployed(broker_vm()["resources"], params)
    # THEN the VM (a module of its own) is deployed only without it, the network interface always
    assert ("virtualMachine" in modules) is (not exists)
    assert modules.get("virtualMachine", {}).get("detail", {}).get("path", "brokerVmInstance.bicep") == \
        "brokerVmInstance.bicep"
    assert "networkInterface" in resources
    assert not any(r["type"] == "Microsoft.Compute/virtualMachines" for r in resources.values()), \
        "a VM declared in brokerVm.bicep itself would be redeployed (and its customData with it)"
    # AND with it, the VM is referenced as existing, under the name a new one gets
    existing = broker_vm()["resources"]["existingVirtualMachine"]
    assert existing["existing"] is True and existing["type"] == "Microsoft.Compute/virtualMachines"
    assert holds(existing["config"]["condition"], params) is exists
    assert existing["config"]["config"]["name"] == "vmName"
    assert broker_vm()["modules"]["virtualMachine"]["config"]["config"]["params"]["vmName"] == "vmName"
    assert broker_vm()["variables"]["vmName"]["value"] == "vm-${name}-${resourceToken}"


def test_the_vm_instance_module_declares_the_vm_unconditionally() -> None:
    # checkov 3.3.30 evaluates no `= if (...)` resource body: the VM stays plain in its own module
    instance = parse(MODULES / "brokerVmInstance.bicep")["resources"]
    assert list(instance) == ["virtualMachine"]
    assert "condition" not in instance["virtualMachine"]["config"]


def test_outputs_resolve_from_the_existing_vm_or_the_new_one() -> None:
    outputs = broker_vm()["outputs"]
    for output, existing, created in (("vmId", ("existingVirtualMachine", "id"), ("virtualMachine", "outputs", "vmId")),
                                      ("principalId", ("existingVirtualMachine", "identity", "principalId"),
                                       ("virtualMachine", "outputs", "principalId"))):
        assert outputs[output]["value"]["operator"] == {"type": "conditional", "operands": {
            "condition": "brokerVmExists", "true_value": accessor(*existing), "false_value": accessor(*created)}}
    assert outputs["vmName"]["value"] == "vmName"
    assert outputs["cloudInitHash"]["value"] == "cloudInitHash"
    assert broker_vm()["variables"]["cloudInitHash"]["value"] == {
        "function": {"type": "unique_string", "parameters": {"base_string": "cloudInit"}}}


def test_everything_that_needs_the_vm_still_gets_it_and_the_app_does_not_depend_on_it() -> None:
    main = parse(MAIN)
    modules = main["modules"]
    assert modules["keyVault"]["config"]["params"]["brokerPrincipalId"] == accessor("brokerVm", "outputs",
                                                                                    "principalId")
    assert modules["monitoring"]["config"]["params"]["brokerVmId"] == accessor("brokerVm", "outputs", "vmId")
    # the function app's settings come from the network (the broker's name) and the parameters, never the VM
    assert "brokerVm" not in str(modules["functionApp"]["config"]["params"])
    assert "brokerVmExists" not in str(modules["functionApp"]["config"]["params"])
    outputs = main["outputs"]
    for name in ("brokerHost", "brokerAzureHost", "brokerIpAddress", "brokerCertificate", "brokerCaCertificateCommand",
                 "brokerAdminPasswordLocation", "functionAppUrl", "functionAppName", "keyVaultName"):
        assert name in outputs, name
        assert "brokerVmExists" not in str(outputs[name]["value"]), name
    assert outputs["brokerVmName"]["value"] == accessor("brokerVm", "outputs", "vmName")
    assert outputs["brokerCloudInitHash"]["value"] == accessor("brokerVm", "outputs", "cloudInitHash")
    assert outputs["brokerVmReused"]["value"] == "brokerVmExists"


def test_a_new_vm_is_tagged_with_what_it_was_created_with() -> None:
    # scripts/deploy reads these tags later: the VM is never redeployed, so they stay true of its first boot
    tags = broker_vm()["modules"]["virtualMachine"]["config"]["config"]["params"]["tags"]["function"]
    assert tags["type"] == "union" and tags["parameters"]["arg_1"] == "tags"
    added = tags["parameters"]["arg_2"]
    assert added["'mqtt-saas-cloud-init'"] == "cloudInitHash"
    mode = added["'mqtt-saas-broker-certificate'"]["operator"]["operands"]
    assert (mode["true_value"], mode["false_value"]) == ("generated-ca", "letsencrypt")
    assert mode["condition"] == {"function": {"type": "empty", "parameters": {"item_to_test": "letsEncryptEmail"}}}


def test_deploy_uses_the_tag_names_the_template_writes() -> None:
    text = (Path(__file__).resolve().parents[2] / "scripts" / "deploy").read_text()
    assert 'CLOUD_INIT_TAG = "mqtt-saas-cloud-init"' in text
    assert 'CERTIFICATE_TAG = "mqtt-saas-broker-certificate"' in text
