"""What both daemons share beyond MQTT: durable file writes and supervised loops."""
