"""A device simulator: one factory machine publishing telemetry over MQTT v5/TLS with its own credential.

    python scripts/simulator.py --credential .localstack/demo-device.json \
        --host 127.0.0.1 --port 18883 --cafile .localstack/mosquitto/ca.crt [--interval 2] [--count N]

It connects as the device (username and bound client id from the credential file that scripts/dev writes), verifies
the broker with the given CA, sets a retained last will ``offline`` on ``t/{tenant}/d/{device}/status`` and publishes
a retained ``online`` there on every connect. Every ``--interval`` seconds it publishes one reading
``{"ts": epoch ms, "seq": n, "metrics": {...}}`` at QoS 1 to ``.../telemetry`` and waits for its PUBACK before the
next one. paho reconnects on its own when the broker goes away. SIGTERM or SIGINT (and the end of ``--count``)
publish ``offline`` and disconnect cleanly, so the will is not sent as well.

It obeys one command, sent through the API (POST /api/devices/{id}/commands) to ``t/{tenant}/d/{device}/cmd``,
which it subscribes to on every connect: ``set_point`` ``{"value": rpm}`` sets the spindle speed it runs at in
auto mode (0 to 30000; manual runs at half). From the first such command on, every reading reports ``set_point``;
and the next telemetry message after a command carries its ack as an extra record, ``{"cmd_ack": <command id>,
"cmd_result": "applied"}`` (or why it was rejected), which the drain stores like any reading and the API shows as
the command's ack.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import ssl
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.registry import DeviceCredential  # noqa: E402 - after the path set-up

log = logging.getLogger("simulator")

ACK_TIMEOUT_S = 10.0
OFFLINE_ACK_TIMEOUT_S = 5.0
MAX_SET_POINT_RPM = 30000.0


def load_credential(path: Path) -> DeviceCredential:
    """Reads what scripts/dev stores in demo-device.json (a shared.registry.DeviceCredential as JSON)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return DeviceCredential(
        data["tenant"], data["device"], data["username"], data.get("client_id") or data["username"], data["password"]
    )


class Machine:
    """A CNC press that cycles through modes; its readings drift like a real one's rather than jump."""

    MODES = ("auto", "manual", "idle", "maintenance")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.mode = "auto"
        self.temperature = 45.0
        self.rpm = 12000.0
        self.set_point = 12000.0  # spindle speed in auto mode; the set_point command changes it
        self.set_point_commanded = False
        self.door_open = False

    def step(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.03:
            self.mode = rng.choices(self.MODES, weights=(70, 15, 10, 5))[0]
        # The door opens only when the spindle may stop (not in auto), and closes again soon.
        self.door_open = self.mode != "auto" and (rng.random() < 0.3 if not self.door_open else rng.random() < 0.7)
        target_rpm = (
            {"auto": self.set_point, "manual": self.set_point / 2}.get(self.mode, 0.0) if not self.door_open else 0.0
        )
        self.rpm += (target_rpm - self.rpm) * 0.5 + (rng.gauss(0, 40) if target_rpm else 0.0)
        self.rpm = max(0.0, self.rpm)
        # Heats up with the spindle, cools towards the hall's 22 C when it stands still.
        target_temp = 22.0 + self.rpm / 12000.0 * 48.0
        self.temperature += (target_temp - self.temperature) * 0.05 + rng.gauss(0, 0.3)
        metrics: dict[str, Any] = {
            "temperature": round(self.temperature, 2),
            "spindle_rpm": int(round(self.rpm)),
            "door_open": self.door_open,
            "mode": self.mode,
        }
        if self.set_point_commanded:  # the factory default is not news; a commanded one is reported from then on
            metrics["set_point"] = self.set_point
        return metrics


def apply_command(machine: Machine, name: object, args: object) -> str:
    """Carries out one command on the machine; the result it reports with its ack."""
    if name != "set_point":
        return f"rejected: unknown command {str(name)[:64]!r}"
    value = args.get("value") if isinstance(args, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SET_POINT_RPM:
        return f"rejected: value must be a number from 0 to {MAX_SET_POINT_RPM:g}"
    machine.set_point, machine.set_point_commanded = float(value), True
    return "applied"


class Simulator:
    def __init__(self, credential: DeviceCredential, host: str, port: int, cafile: str) -> None:
        self.credential = credential
        self.host, self.port = host, port
        self.status_topic = f"{credential.topic_prefix}/status"
        self.telemetry_topic = f"{credential.topic_prefix}/telemetry"
        self.command_topic = f"{credential.topic_prefix}/cmd"
        self.machine: Machine | None = None
        # Acks for commands carried out since the last reading: (command id, result, ts ms). Guarded by _cond.
        self._pending_acks: list[tuple[str, str, int]] = []
        # The broker may deliver a QoS 1 command twice: the id says it is the same one.
        self._seen_commands: deque[str] = deque(maxlen=256)
        self.stop = threading.Event()
        self._cond = threading.Condition()
        self._acks: dict[int, Any] = {}
        self._unawaited: set[int] = set()  # "online" publishes: nobody waits for their PUBACK
        self._connected = False
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=credential.client_id,  # the broker binds the credential to this id
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(credential.username, credential.password)
        self.client.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # -- paho callbacks (network thread) ---------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # e.g. "Not authorized" for a wrong password; paho keeps retrying with back-off.
            log.error("broker refused the connection: %s", reason_code.getName())
            return
        log.info("connected to %s:%s as %s", self.host, self.port, self.credential.username)
        info = client.publish(self.status_topic, "online", qos=1, retain=True)
        # A clean start has no subscriptions: ask again on every connect.
        client.subscribe(self.command_topic, qos=1)
        with self._cond:
            self._unawaited.add(info.mid)
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self.stop.is_set():
            log.warning("disconnected (%s); reconnecting", reason_code.getName())

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            if mid in self._unawaited:
                self._unawaited.discard(mid)
                if reason_code.is_failure:
                    log.error("broker refused the online status: %s", reason_code.getName())
                return
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        try:
            command = json.loads(message.payload)
            command_id = str(command["id"])
        except (ValueError, KeyError, TypeError):
            log.error("ignored a command that is not JSON with an id on %s", message.topic)
            return
        with self._cond:
            if command_id in self._seen_commands or self.machine is None:
                return
            self._seen_commands.append(command_id)
            result = apply_command(self.machine, command.get("name"), command.get("args"))
            self._pending_acks.append((command_id, result, int(time.time() * 1000)))
        log.info("command %s %s: %s", command.get("name"), command_id, result)

    # -- main thread -----------------------------------------------------------------------------------------------

    def _wait(self, ready, timeout: float, interruptible: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (interruptible and self.stop.is_set()):
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    def _publish_acked(
        self, topic: str, payload: str, retain: bool, timeout: float, interruptible: bool = True
    ) -> bool:
        """Publishes at QoS 1 and waits for the PUBACK; False if none came (paho resends it after a reconnect)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", topic, info.rc.name)
            return False
        if not self._wait(lambda: info.mid in self._acks, timeout, interruptible):
            return False
        with self._cond:
            reason = self._acks.pop(info.mid)
        if reason.is_failure:
            log.error("broker refused a publish to %s: %s", topic, reason.getName())
            return False
        return True

    def run(self, interval: float, count: int | None, rng: random.Random) -> int:
        machine = self.machine = Machine(rng)
        properties = Properties(PacketTypes.CONNECT)
        # No session kept on the broker: a command sent while the simulator is offline is not queued for it.
        properties.SessionExpiryInterval = 0
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=True, properties=properties)
        self.client.loop_start()  # retries the first connection too, then reconnects on loss
        sent = 0
        seq = 0
        next_at = time.monotonic()
        try:
            while not self.stop.is_set() and (count is None or sent < count):
                if not self._wait(lambda: self._connected, 3600):
                    continue
                seq += 1
                with self._cond:
                    reading = {"ts": int(time.time() * 1000), "seq": seq, "metrics": machine.step()}
                    acks, self._pending_acks = self._pending_acks, []
                records = [reading]
                for command_id, result, ts in acks:
                    seq += 1
                    records.append({"ts": ts, "seq": seq, "metrics": {"cmd_ack": command_id, "cmd_result": result}})
                payload = json.dumps(records if acks else reading)
                if self._publish_acked(self.telemetry_topic, payload, False, ACK_TIMEOUT_S):
                    sent += 1
                    log.info("seq %d acknowledged: %s", reading["seq"], json.dumps(reading["metrics"], sort_keys=True))
                else:
                    with self._cond:  # not delivered: the acks go with the next reading
                        self._pending_acks[:0] = acks
                    if not self.stop.is_set():
                        log.warning("seq %d not acknowledged within %.0f s", reading["seq"], ACK_TIMEOUT_S)
                next_at = max(next_at + interval, time.monotonic())
                self.stop.wait(next_at - time.monotonic())
        finally:
            self._shutdown()
        log.info("stopped after %d acknowledged readings", sent)
        return 0

    def _shutdown(self) -> None:
        self.stop.set()  # from here on a disconnect is ours, not one to report
        # A clean DISCONNECT suppresses the will, so say "offline" ourselves first.
        if self._connected and not self._publish_acked(
            self.status_topic, "offline", True, OFFLINE_ACK_TIMEOUT_S, interruptible=False
        ):
            log.warning("could not publish offline; the broker sends the will instead")
        self.client.disconnect()
        self.client.loop_stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--credential",
        type=Path,
        default=Path(".localstack/demo-device.json"),
        help="device credential JSON written by scripts/dev (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=18883, help="broker MQTT/TLS port (default: %(default)s)")
    parser.add_argument(
        "--cafile",
        default=".localstack/mosquitto/ca.crt",
        help="CA certificate that verifies the broker (default: %(default)s)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between readings (default: 2)")
    parser.add_argument("--count", type=int, default=None, help="stop after N acknowledged readings")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable readings")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        credential = load_credential(args.credential)
    except (OSError, ValueError, KeyError) as exc:
        log.error("cannot read the device credential %s: %s", args.credential, exc)
        return 2
    simulator = Simulator(credential, args.host, args.port, args.cafile)

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        simulator.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return simulator.run(args.interval, args.count, random.Random(args.seed))


if __name__ == "__main__":
    sys.exit(main())
