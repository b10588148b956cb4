"""Fixtures for the gateway's tests: the shop floor (tests/gateway/servers.py), a tenant with the gateway's devices
provisioned on the real broker, and the gateway itself as `python -m gateway --config ...` in a subprocess, so it
can be SIGKILLed like a real one (tests/gateway/harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.gateway.harness import HEALTH_DEVICE, GatewayProcess, Site, clear_retained_status
from tests.gateway.servers import BackgroundLoop, LanBroker, ModbusMeter, OpcUaPlc
from tests.support.devices import new_tenant_with_devices


@pytest.fixture(scope="session")
def shop_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def opcua_plc(shop_loop: BackgroundLoop) -> Iterator[OpcUaPlc]:
    plc = OpcUaPlc(shop_loop)
    yield plc
    plc.close()


@pytest.fixture(scope="session")
def lan_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanBroker]:
    broker = LanBroker(tmp_path_factory.mktemp("lan-mosquitto"))
    yield broker
    broker.close()


@pytest.fixture
def modbus_meter(shop_loop: BackgroundLoop) -> Iterator[Callable[[], ModbusMeter]]:
    meters: list[ModbusMeter] = []

    def start() -> ModbusMeter:
        meters.append(ModbusMeter(shop_loop))
        return meters[-1]

    yield start
    for meter in meters:
        meter.close()


@pytest.fixture
def site(app_pool, settings, database, tmp_path) -> Iterator[Callable[..., Site]]:
    """site("meter-01", "plc-01"): a tenant with those devices and the health device, on the real broker."""
    made: list[Site] = []

    def make(*devices: str) -> Site:
        tenant, credentials = new_tenant_with_devices(app_pool, settings, [*devices, HEALTH_DEVICE])
        made.append(Site(tenant, credentials, settings, tmp_path, database))
        return made[-1]

    yield make
    # The gateway's retained statuses and last wills would otherwise reach every later test's drain (the broker
    # outlives this test's database) as dead letters of an unknown device.
    for each in made:
        clear_retained_status(settings, each.credentials.values())


@pytest.fixture
def gateway(tmp_path, site) -> Iterator[Callable[[dict[str, Any]], GatewayProcess]]:
    # (site: so the gateways are gone before the site clears their retained statuses)
    running: list[GatewayProcess] = []

    def make(config: dict[str, Any]) -> GatewayProcess:
        running.append(GatewayProcess(tmp_path, config))
        return running[-1]

    yield make
    for process in running:
        if process.process is not None:
            process.kill()
