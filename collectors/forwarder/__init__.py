"""The forwarder: the gateway's one MQTT client, with the store-and-forward buffer and the payload formats."""
