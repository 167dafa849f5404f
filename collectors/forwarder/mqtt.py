"""The broker session: paho-mqtt 2.x driven from asyncio (the only module importing paho).

No `loop_start()` thread: the socket sits in the event loop (`add_reader`/`add_writer`)
and `loop_read`/`loop_write`/`loop_misc` run there, so a publish is an append to paho's
queue and a write when the socket is writable, without paho's per-publish socketpair
wake-up of a network thread (FIELD-NOTES: that hand-off is most of paho's cost). Only
the blocking TCP connect and TLS handshake run in a worker thread, once per connection.

Each connection gets a fresh paho client, so what paho had queued for a dead session is
dropped with it: the forwarder's buffer, not paho's memory, decides what is sent again.
Delivery is reported per message through `publish(..., done)`: PUBACK (QoS 1), PUBCOMP
(QoS 2), or written to the socket (QoS 0).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt import __version__ as _PAHO_VERSION
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collectors.core.config import read_secret
from collectors.core.errors import FieldgateError
from collectors.core.service import ErrorLatch
from collectors.forwarder.config import ForwarderConfig
from collectors.forwarder.formats import OutMessage
from collectors.forwarder.quarantine import shorten

log = logging.getLogger(__name__)

# paho's own in-flight limit, by the QoS of the readings. QoS 1: none (0). With a limit, every
# PUBACK walks paho's whole message dict for a queued message to send next, and a small one (paho's
# default 20) leaves the link idle while its round trips wait: layout tag went from 42 to 34 us of
# forwarder CPU per message and from 16k to 20-26k messages/s. The forwarder bounds what it hands to
# paho instead (app.py: its window plus one batch), so everything paho holds is on the wire.
# QoS 2: 20. A broker holds each QoS 2 message until our PUBREL and MQTT 3.1.1 cannot tell us how
# many it accepts: past its quota (Mosquitto's max_inflight_messages, 20 by default) Mosquitto
# answers PUBREC and PUBCOMP as usual and drops the message (tests/forwarder/test_session.py).
MAX_INFLIGHT = {0: 0, 1: 0, 2: 20}
BACKOFF_MIN = 0.5
BACKOFF_MAX = 5.0  # a broker back from an outage is found within 5 s; a retry is one TCP connect
MISC_INTERVAL = 0.5
# Brokers that leave Nagle's algorithm on (Mosquitto's default: set_tcp_nodelay false) hold each
# PUBACK after the first until our TCP ACK arrives, and Linux delays that ACK while we have
# nothing to send: at QoS 1 that stall, not CPU, held the forwarder (replay included) near
# 8,000 messages/s on loopback. Quick-ack mode after every read answers at once; the kernel
# leaves the mode by itself, so it is asked again each time (Linux only; elsewhere a no-op).
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


# The paho versions whose PUBACK/PUBCOMP handling _Client's shortcut was checked against.
_FAST_ACK_VERSIONS = ("2.1.", "2.2.")


class _Client(paho.Client):
    """paho's client, with MQTT 3.1.1 PUBACK and PUBCOMP handled without per-packet objects.

    For each PUBACK paho decodes a ReasonCode and a Properties object, which MQTT 3.1.1 does
    not even carry: 11 us per acknowledged message, a third of the forwarder's CPU at QoS 1.
    The shortcut reads the packet id and hands shared, empty ones to paho's own completion
    (`_do_on_publish`: the on_publish callback, the message leaving paho's store). MQTT 5 and
    anything unexpected take paho's path; paho versions not listed above get plain paho.
    """

    if _PAHO_VERSION.startswith(_FAST_ACK_VERSIONS):

        def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
            packet = self._in_packet["packet"]
            if self._protocol == paho.MQTTv5 or len(packet) != 2:
                return super()._handle_pubackcomp(cmd)
            mid = (packet[0] << 8) | packet[1]
            with self._out_message_mutex:
                if mid in self._out_messages:  # else a duplicate acknowledgement: ignored, as paho does
                    return self._do_on_publish(mid, _ACK_SUCCESS, _NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS


_ACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # read-only for the callback: ours ignores both
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


class BrokerError(FieldgateError):
    """The broker cannot be reached or refused us; the message says what to fix."""


class SessionHandler(Protocol):
    """What the forwarder does when the session changes or a message arrives."""

    def session_up(self) -> None: ...

    def session_down(self, graceful: bool) -> None: ...

    def message(self, topic: str, payload: bytes) -> None: ...


def describe_connect_error(exc: BaseException, host: str, port: int, ca_file: object) -> str:
    """A sentence a plant engineer can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return (
                f"TLS: the certificate of {host}:{port} does not name {host!r} ({exc.verify_message}); "
                "connect by a name the certificate carries (tls.verify_hostname: false skips this check)"
            )
        return (
            f"TLS: the certificate of {host}:{port} was refused ({exc.verify_message}); "
            f"check that tls.ca_file ({ca_file}) is the CA that signed the broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {host}:{port} failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"broker {host}:{port} refused the connection (is it running?)"
    if isinstance(exc, socket.gaierror):
        return f"broker host {host!r} not found: {exc.strerror}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"broker {host}:{port} did not answer in time"
    return f"cannot connect to {host}:{port}: {exc}"


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


class BrokerSession:
    """An async context manager holding one MQTT session up, reconnecting with capped backoff."""

    def __init__(
        self,
        config: ForwarderConfig,
        handler: SessionHandler,
        will: Callable[[], OutMessage | None],
        clean_session: bool = True,
    ) -> None:
        self._config = config
        self._mqtt = config.mqtt
        self._handler = handler
        self._will = will
        self._clean_session = clean_session
        self.client_id = config.mqtt.client_id or f"fieldgate-{config.gateway.id}"
        self._password = read_secret(config.mqtt.password, config.mqtt.password_file)
        self._client: paho.Client | None = None
        self._pending: dict[int, Callable[[], None]] = {}  # QoS > 0 by mid: PUBACK / PUBCOMP
        self._written: deque[Callable[[], None]] = deque()  # QoS 0, in order: written to the socket
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closing_session = False  # we asked for this disconnect
        self._session_ok = False  # this attempt reached CONNACK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._fd = -1
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self.last_delivery = 0.0  # loop time of the last delivery report
        self.attempts = 0  # connection attempts so far (each a TCP connect, and CONNECT when it succeeds)
        self.last_attempt = 0.0  # loop time the latest attempt ended (failed, or the session it made ended)
        self._first_failure = True
        self.refused = 0  # messages paho refused (a topic with a wildcard, a payload too large): dropped
        self._refusals = ErrorLatch(log, "MQTT client refused a message; dropped")

    @property
    def retrying(self) -> bool:
        """True while the connection loop runs: a lost or unreachable broker is being retried."""
        return self._task is not None and not self._task.done()

    @property
    def outstanding(self) -> int:
        """Messages handed to paho and not yet delivered."""
        return len(self._pending) + len(self._written)

    async def __aenter__(self) -> BrokerSession:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mqtt-session")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    # -- publishing

    def publish(self, message: OutMessage, done: Callable[[], None] | None = None) -> bool:
        """Queue one message; `done()` runs once it is delivered. False when not connected.

        A message paho refuses (a topic with `+`/`#`, not UTF-8, a payload over the MQTT limit)
        is dropped, counted in `refused` and logged (latched), and `done()` runs at once: one
        bad message must not hold its batch, or the publisher, for ever."""
        client = self._client
        if client is None or not self.connected:
            return False
        if done is not None and message.qos:
            client.on_publish = self._on_publish
        try:
            info = client.publish(message.topic, message.payload, message.qos, message.retain)
        except (ValueError, TypeError, OverflowError) as exc:
            self.refused += 1
            self._refusals.failure(f"topic {shorten(repr(message.topic), 120)}: {exc}")
            if done is not None:
                done()
            return True
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if done is not None:
            if message.qos:
                self._pending[info.mid] = done
            else:
                self._written.append(done)
        return True

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        if self._client is not None and topics:
            self._client.subscribe(topics)

    async def disconnect(self, final_messages: list[OutMessage], wait: float = 2.0) -> None:
        """Publish `final_messages`, wait (bounded) until they are delivered, then DISCONNECT."""
        client = self._client
        if client is None or not self.connected:
            return
        delivered = asyncio.Event()
        remaining = [len(final_messages)]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] <= 0:
                delivered.set()

        for message in final_messages:
            self.publish(message, one_done)
        if final_messages:
            with suppress(TimeoutError):
                await asyncio.wait_for(delivered.wait(), wait)
        self._closing_session = True
        client.disconnect()
        # paho queues the DISCONNECT packet; the event loop writes it. Closing the socket
        # before that would make the broker publish our last will (offline / NDEATH) too.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), wait)

    async def reconnect(self, final_messages: list[OutMessage]) -> None:
        """End this session cleanly; the run loop connects again after the usual backoff."""
        await self.disconnect(final_messages)

    # -- the connection loop

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        try:
            while True:
                self._closing_session = self._session_ok = False
                self.attempts += 1
                try:
                    await self._connect()
                except (OSError, ssl.SSLError, BrokerError) as exc:
                    self._report_failure(exc)
                else:
                    await self._lost.wait()
                    if self._session_ok:
                        delay = BACKOFF_MIN
                assert self._loop is not None
                self.last_attempt = self._loop.time()
                await asyncio.sleep(delay * (0.5 + 0.5 * random.random()))  # jitter, never past BACKOFF_MAX
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._drop_client()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        if self._misc is not None:
            self._misc.cancel()
        if client is not None:
            sock = client.socket()
            self._socket_closed()
            if sock is not None:
                with suppress(OSError):
                    sock.close()

    def _report_failure(self, exc: BaseException) -> None:
        ca = self._mqtt.tls.ca_file if self._mqtt.tls else None
        message = exc.args[0] if isinstance(exc, BrokerError) else describe_connect_error(
            exc, self._mqtt.host, self._mqtt.port, ca
        )
        self.last_error = message
        if self._first_failure:
            log.error("%s; retrying with backoff", message)
            self._first_failure = False
        else:
            log.debug("still cannot connect: %s", message)

    def _make_client(self) -> _Client:
        mqtt = self._mqtt
        client = _Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=self._clean_session,
            protocol=paho.MQTTv311,
        )
        client.max_inflight_messages_set(MAX_INFLIGHT[mqtt.qos])
        client.max_queued_messages_set(0)
        if mqtt.username is not None:
            client.username_pw_set(mqtt.username, self._password)
        if mqtt.tls is not None:
            client.tls_set_context(self._tls_context())
        will = self._will()
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message  # on_publish only while QoS > 0 deliveries are awaited
        return client

    def _tls_context(self) -> ssl.SSLContext:
        """Verification on (CA, and the host name unless switched off); errors name the file."""
        tls = self._mqtt.tls
        assert tls is not None
        try:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"mqtt.tls.ca_file {tls.ca_file}: not a usable CA file ({_why(exc)})") from exc
        context.check_hostname = tls.verify_hostname
        if tls.cert_file is not None and tls.key_file is not None:
            try:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise BrokerError(
                    f"mqtt.tls.cert_file {tls.cert_file} with key_file {tls.key_file}: "
                    f"not a usable certificate and key ({_why(exc)})"
                ) from exc
        return context

    async def _connect(self) -> None:
        assert self._loop is not None
        client = self._make_client()
        self._lost.clear()
        self._pending.clear()
        self._written.clear()
        # TCP connect + TLS handshake block: one worker thread per attempt, not per publish.
        await asyncio.to_thread(
            client.connect, self._mqtt.host, self._mqtt.port, max(1, round(self._mqtt.keepalive))
        )
        sock = client.socket()
        if sock is None:
            raise BrokerError(f"broker {self._mqtt.host}:{self._mqtt.port} closed the connection")
        self._client = client
        loop = self._loop
        # By descriptor number: paho reports a socket it closed with fileno() == -1.
        fd = self._fd = sock.fileno()
        loop.add_reader(fd, self._readable)
        client.on_socket_register_write = lambda c, u, s: loop.add_writer(fd, self._writable)
        client.on_socket_unregister_write = lambda c, u, s: self._stop_writing()
        client.on_socket_close = lambda c, u, s: self._socket_closed()
        if client.want_write():
            loop.add_writer(fd, self._writable)
        self._misc = loop.call_later(MISC_INTERVAL, self._housekeeping)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read(100)
        # TLS may hold decrypted bytes the socket no longer signals as readable.
        sock = client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending() and self._client is client:
            client.loop_read(100)
        if _QUICKACK is not None and isinstance(sock, socket.socket) and self._client is client:
            with suppress(OSError):  # closed by paho during the read: the session is going away anyway
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _writable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_write()
        # QoS 0 is delivered once written: when paho's queue is empty, every one queued so far
        # is. Counting this way instead of paho's per-message on_publish saves the ReasonCode
        # and Properties objects paho builds for each call (a fifth of the cost of layout tag).
        if self._written and self._client is client and not client.want_write():
            written, self._written = self._written, deque()
            if self._loop is not None:
                self.last_delivery = self._loop.time()
            for done in written:
                done()

    def _housekeeping(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_misc()  # keep-alive PINGREQ, and notices a broker that stopped answering
        if self._client is client and self._loop is not None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._housekeeping)

    def _stop_writing(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_writer(self._fd)

    def _socket_closed(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    # -- paho callbacks (run in the event loop, from loop_read/loop_write/loop_misc)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._report_failure(BrokerError(
                f"broker {self._mqtt.host}:{self._mqtt.port} refused the session: {reason}"
                + (" (check mqtt.username and the password)" if "authori" in str(reason).lower()
                   or "password" in str(reason).lower() else "")
            ))
            client.disconnect()
            return
        self.connected = True
        self.connects += 1
        self._session_ok = True
        if not self._first_failure:
            log.info("connected to the broker %s:%d again", self._mqtt.host, self._mqtt.port)
        else:
            log.info("connected to the broker %s:%d as %s", self._mqtt.host, self._mqtt.port, self.client_id)
        self._first_failure = True
        self.last_error = None
        self._handler.session_up()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self._client:
            return
        was_connected = self.connected
        graceful = self._closing_session or self._closing
        self.connected = False
        self._client = None
        self._pending.clear()
        self._written.clear()
        if self._misc is not None:
            self._misc.cancel()
        if was_connected:
            if graceful:
                log.info("disconnected from the broker")
            else:
                log.warning("connection to the broker lost (%s); buffering and reconnecting", reason)
                self._first_failure = False
            self._handler.session_down(graceful)
        self._lost.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        done = self._pending.pop(mid, None)
        if not self._pending:
            client.on_publish = None
        if done is not None:
            if self._loop is not None:
                self.last_delivery = self._loop.time()
            done()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._handler.message(message.topic, bytes(message.payload))
        except Exception:  # a bad message must never take the session down
            log.exception("handling a message on %s failed", message.topic)
