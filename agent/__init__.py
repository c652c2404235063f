"""The device daemon: store, signals, features, ranking, link (MQTT), local API, daemon wiring."""

AGENT_VERSION = "0.1.0"
