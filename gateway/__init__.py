"""The mqtt-saas edge gateway: reads Modbus TCP, OPC UA and plain LAN MQTT devices on the shop floor, keeps every
reading in a local SQLite buffer, and publishes them in the native telemetry format over MQTT v5/TLS with each
device's own credential. docs/gateway.md says how to install, configure and run it."""
