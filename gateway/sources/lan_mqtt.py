"""Devices that publish plain MQTT on the shop-floor LAN (an ESP8266 build that cannot do TLS, say) to a local
broker, usually a Mosquitto on the gateway itself: the gateway subscribes there and forwards their readings into
the buffer, stamped when they arrive, like any other source's.

A topic maps to a device and either one metric (format "value": the payload is a number, true/false or text) or
several (format "json": a flat JSON object; ``fields`` maps its keys to metrics, or every key is a metric). A
payload that cannot be read is a read error of that device, logged, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import LanMqttConfig, LanTopic
from gateway.hub import Hub, event, now_ms

log = logging.getLogger(__name__)


def parse_value(payload: bytes) -> Any:
    text = payload.decode("utf-8").strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        number = json.loads(text)
    except ValueError:
        return text
    return number if isinstance(number, bool | int | float | str) else text


def readings_of(topic: LanTopic, payload: bytes) -> dict[str, Any]:
    if topic.format == "value":
        assert topic.metric is not None
        return {topic.metric: parse_value(payload)}
    document = json.loads(payload)
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    if topic.fields:
        return {metric: document[key] for key, metric in topic.fields.items() if key in document}
    return dict(document)


class LanMqttSource:
    def __init__(self, config: LanMqttConfig, hub: Hub) -> None:
        self.config, self.hub = config, hub
        self._last_error_log: dict[str, float] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id or f"mqtt-saas-gateway-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password)
        client.reconnect_delay_set(1, 30)
        filters = sorted({t.topic for t in self.config.topics})

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                event(
                    "source.read_error",
                    {"source": "mqtt_lan", "errors": [f"connect: {reason.getName()}"]},
                    logging.WARNING,
                )
                return
            client.subscribe([(f, 1) for f in filters])
            loop.call_soon_threadsafe(
                event, "source.connected", {"source": "mqtt_lan", "broker": f"{self.config.host}:{self.config.port}"}
            )

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.handle, message.topic, bytes(message.payload), now_ms())

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect_async(self.config.host, self.config.port, keepalive=30)
        client.loop_start()
        try:
            await self.hub.stopping.wait()
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def handle(self, topic_name: str, payload: bytes, ts_ms: int) -> None:
        for topic in self.config.topics:
            if not mqtt.topic_matches_sub(topic.topic, topic_name):
                continue
            try:
                values = readings_of(topic, payload)
            except (ValueError, UnicodeDecodeError) as exc:
                self.hub.read_errors[topic.device] += 1
                if time.monotonic() - self._last_error_log.get(topic.device, 0) > 60:
                    self._last_error_log[topic.device] = time.monotonic()
                    event(
                        "source.read_error",
                        {
                            "device": topic.device,
                            "source": "mqtt_lan",
                            "topic": topic_name,
                            "errors": [f"unreadable payload: {exc}"[:200]],
                        },
                        logging.WARNING,
                    )
                continue
            if values:
                self.hub.submit(topic.device, ts_ms, values)
