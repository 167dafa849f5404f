"""The OPC UA collector: subscriptions and polled reads through asyncua."""
