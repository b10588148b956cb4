#!/usr/bin/env bash
# Rendered from shared/broker/contract.py by infra/render_broker_conf.py; edits are lost.
set -euo pipefail
# The VM's broker unless told otherwise (the tests point it at their own).
ctrl() { mosquitto_ctrl -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" --cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" -P "$MQTT_ADMIN_PASSWORD" dynsec "$@"; }
ctrl createRole provisioner || true
ctrl createRole ingest || true
ctrl createRole commander || true
mosquitto_pub -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" --cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" -P "$MQTT_ADMIN_PASSWORD" -q 1 -t '$CONTROL/dynamic-security/v1' -m '{"commands": [{"command": "setDefaultACLAccess", "acls": [{"acltype": "publishClientSend", "allow": false}, {"acltype": "publishClientReceive", "allow": false}, {"acltype": "subscribe", "allow": false}, {"acltype": "unsubscribe", "allow": true}]}, {"command": "modifyRole", "rolename": "provisioner", "acls": [{"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": true, "priority": 0}, {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": true, "priority": 0}, {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": true, "priority": 0}]}, {"command": "modifyRole", "rolename": "ingest", "acls": [{"acltype": "subscribePattern", "topic": "t/+/d/+/telemetry", "allow": true, "priority": 0}, {"acltype": "publishClientReceive", "topic": "t/+/d/+/telemetry", "allow": true, "priority": 0}, {"acltype": "publishClientSend", "topic": "t/+/d/+/telemetry", "allow": true, "priority": 0}, {"acltype": "subscribePattern", "topic": "t/+/d/+/status", "allow": true, "priority": 0}, {"acltype": "publishClientReceive", "topic": "t/+/d/+/status", "allow": true, "priority": 0}, {"acltype": "publishClientSend", "topic": "t/+/d/+/status", "allow": true, "priority": 0}, {"acltype": "subscribePattern", "topic": "t/+/d/+/+/state", "allow": true, "priority": 0}, {"acltype": "publishClientReceive", "topic": "t/+/d/+/+/state", "allow": true, "priority": 0}, {"acltype": "publishClientSend", "topic": "t/+/d/+/+/state", "allow": true, "priority": 0}, {"acltype": "subscribePattern", "topic": "mqtt-saas/drain/#", "allow": true, "priority": 0}, {"acltype": "publishClientReceive", "topic": "mqtt-saas/drain/#", "allow": true, "priority": 0}, {"acltype": "publishClientSend", "topic": "mqtt-saas/drain/#", "allow": true, "priority": 0}]}, {"command": "modifyRole", "rolename": "commander", "acls": [{"acltype": "publishClientSend", "topic": "t/+/d/+/cmd", "allow": true, "priority": 0}]}]}'
ctrl createClient mqtt-saas-provisioner -p "$MQTT_PROVISIONER_PASSWORD" || true
ctrl addClientRole mqtt-saas-provisioner provisioner 0 || true
ctrl createClient mqtt-saas-ingest -c mqtt-saas-ingest -p "$MQTT_INGEST_PASSWORD" || true
ctrl addClientRole mqtt-saas-ingest ingest 0 || true
if [ -n "${MQTT_COMMANDER_PASSWORD:-}" ]; then
  ctrl createClient mqtt-saas-commander -p "$MQTT_COMMANDER_PASSWORD" || true
  ctrl addClientRole mqtt-saas-commander commander 0 || true
fi
