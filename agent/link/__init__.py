"""The device's MQTT link: session, uplink batches, signed downlink, commands."""
