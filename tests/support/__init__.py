"""Real test peers: a Mosquitto broker per test, an MQTT subscriber, free ports."""
