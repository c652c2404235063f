"""The gateway's composition and life: wiring, the MQTT link, the campaign clock."""
