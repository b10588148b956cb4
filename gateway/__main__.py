"""python -m gateway --config gateway.toml [--check]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="mqtt-saas edge gateway: Modbus TCP, OPC UA and LAN MQTT in, "
        "store-and-forward over MQTT v5/TLS out",
    )
    parser.add_argument("--config", required=True, help="the gateway's TOML file")
    parser.add_argument("--check", action="store_true", help="check the configuration, print a summary, exit")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(
            f"tenant {config.tenant}, broker {config.broker.host}:{config.broker.port}, "
            f"buffer {config.buffer.path} (max {config.buffer.max_mb:g} MB, {config.buffer.when_full})"
        )
        for source in config.modbus:
            print(
                f"  modbus {source.host}:{source.port} unit {source.unit_id} -> {source.device}: "
                f"{len(source.points)} points every {source.poll_interval_s:g} s"
            )
        for ua_source in config.opcua:
            print(f"  opcua {ua_source.url} ({ua_source.mode}) -> {ua_source.device}: {len(ua_source.nodes)} nodes")
        for lan in config.lan_mqtt:
            print(f"  mqtt_lan {lan.host}:{lan.port}: {len(lan.topics)} topics")
        if config.health.device:
            print(f"  health -> {config.health.device} every {config.health.interval_s:g} s")
        return 0
    from gateway.app import run  # the sources' libraries load only when the gateway really runs

    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
