"""The MQTT adapter both daemons share: session end, once-per-key logging."""
