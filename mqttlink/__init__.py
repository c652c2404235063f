"""The MQTT adapter both daemons share: client options, session, acked publish, reconnect, logs."""
