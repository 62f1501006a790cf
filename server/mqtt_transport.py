"""Fewer system calls per MQTT message for the server's intake (paho-mqtt 2.x).

paho reads each packet with three or four `recv` calls (one byte of command, the length byte by byte,
then the body) after a `select`, and sends every PUBACK with its own `send`. Each call releases and
retakes the GIL, which the writer thread holds between its own calls, so at a few thousand messages a
second the network thread spends most of its time waiting to get back in. Here one `recv` fills a
buffer that paho then reads from, the loop drains the buffer before it waits again, and acknowledgements
for a committed batch go out as one write.
"""

from __future__ import annotations

import struct
import time

import paho.mqtt.client as mqtt

RECV_CHUNK = 256 * 1024
DRAIN_MAX_PACKETS = 512  # then paho's loop runs once (writes, keepalive) before reading on
_PUBACK = struct.Struct("!BBH")
_U16 = struct.Struct("!H")


class BufferedSocket:
    """A socket whose `recv` is served from one large read; `pending()` reports the buffered bytes.

    paho already asks TLS sockets for `pending()` and then skips waiting in `select`, which is exactly
    what buffered bytes need. Everything else is the wrapped socket's.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            end = min(pos + bufsize, len(buf))
            self._pos = end
            return buf[pos:end]
        data = self._sock.recv(max(bufsize, RECV_CHUNK))  # BlockingIOError and friends pass through
        if len(data) <= bufsize:
            self._buf, self._pos = b"", 0
            return data
        self._buf, self._pos = data, bufsize
        return data[:bufsize]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    @property
    def wrapped(self):
        return self._sock

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class IntakeClient(mqtt.Client):
    """paho's client with buffered reads, a read loop that drains the buffer, and batched PUBACKs."""

    def _create_socket(self):
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        budget = DRAIN_MAX_PACKETS
        while rc == mqtt.MQTT_ERR_SUCCESS and budget and sock is not None and self._sock is sock and sock.pending():
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTT_ERR_AGAIN:
                return mqtt.MQTT_ERR_SUCCESS
            budget -= 1
        return rc

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        packet = self._in_packet["packet"]
        v5 = self._protocol == mqtt.MQTTv5
        if qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        (topic_len,) = _U16.unpack_from(packet, 0)
        pos = 2 + topic_len
        if topic_len == 0 or pos + (2 if qos else 0) + (1 if v5 else 0) > len(packet):
            return super()._handle_publish()  # malformed or unusual: paho decides
        mid = 0
        if qos:
            (mid,) = _U16.unpack_from(packet, pos)
            pos += 2
        if v5:
            if packet[pos] != 0:  # properties present (a topic alias, user properties): paho decodes them
                return super()._handle_publish()
            pos += 1
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2 : 2 + topic_len]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[pos:])
        message.timestamp = time.monotonic()
        self._deliver(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTT_ERR_SUCCESS

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        """`on_message` directly: paho would first match the topic against per-topic callbacks (none here)."""
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def message_callback_add(self, sub, callback) -> None:
        raise TypeError("IntakeClient delivers every message to on_message; per-topic callbacks are not supported")

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (manual-ack mode) with one queued write instead of one per message."""
        if not mids:
            return
        packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        self._packet_queue(mqtt.PUBACK, packet, 0, 0)
