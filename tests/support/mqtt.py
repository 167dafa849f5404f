"""An MQTT subscriber for tests: records every message, waits for the ones a test expects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    def __init__(
        self, host: str, port: int, topics: str | list[str] = "#", qos: int = 1, persistent: bool = False,
        username: str | None = None, password: str | None = None,
    ) -> None:
        """`persistent`: a broker-side session (clean_session false) that a broker restarted with
        persistence keeps, so nothing published while this subscriber reconnects is missed."""
        self.messages: list[Message] = []
        self._lock = threading.Condition()
        self._topics = [topics] if isinstance(topics, str) else topics
        self._qos = qos
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{id(self)}", clean_session=not persistent
        )
        self._client.reconnect_delay_set(1, 2)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("test subscriber could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for topic in self._topics:
            client.subscribe(topic, self._qos)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            message = Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.time())
            self.messages.append(message)
            self._lock.notify_all()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 10.0, count: int = 1
    ) -> list[Message]:
        """The first `count` messages (received so far or later) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({m.topic for m in self.messages})[:20]
                    raise TimeoutError(
                        f"{len(found)}/{count} matching messages after {timeout}s; topics seen: {seen}"
                    )
                self._lock.wait(remaining)

    def on_topic(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
