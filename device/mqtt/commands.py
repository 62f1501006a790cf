"""Commands from the server on `.../cmd`: validated, handled one at a time off the network thread, and acked."""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable

from device.common.credentials import redact
from device.contract import Command, CommandAck, CommandName, SchemaError, extract_command_id, short_reason
from device.mqtt.connection import DeviceConnection, now_ms

logger = logging.getLogger(__name__)

CommandCallback = Callable[[Command], None]

_ACK_CACHE = 128


class CommandWorker:
    """Answers every command with an ack; a QoS 1 redelivery of one already handled gets the same ack again."""

    def __init__(self, connection: DeviceConnection, secrets: list[str]):
        self.connection = connection
        self._secrets = secrets
        self.callback: CommandCallback | None = None
        self._inbox: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._acks: OrderedDict[str, CommandAck] = OrderedDict()
        self.thread: threading.Thread | None = None
        self.received = 0
        self.invalid = 0
        self.dropped = 0

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
        self.thread.start()

    def submit(self, payload: bytes) -> None:
        """Called on paho's network thread: queue the payload, never block."""
        try:
            self._inbox.put_nowait(payload)
        except queue.Full:
            self.dropped += 1
            logger.warning("MQTT: command queue full; dropped a command")

    def stop(self) -> None:
        try:
            self._inbox.put_nowait(None)
        except queue.Full:
            pass  # the worker is a daemon thread; it ends with the process

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            payload = self._inbox.get()
            if payload is None:
                return
            try:
                self.handle(payload)
            except Exception:
                logger.exception("MQTT: command handling failed")

    def _ack(self, command_id: str, command: str | None, ok: bool, reason: str | None = None) -> CommandAck:
        if reason:
            reason = short_reason(redact(reason, self._secrets))
        return CommandAck(
            id=command_id,
            device_id=self.connection.config.device_id,
            ok=ok,
            ts_ms=now_ms(),
            command=command,
            reason=reason,
            paused=self.connection.paused,
        )

    def _send(self, ack: CommandAck) -> None:
        self.connection.publish(self.connection.topics.cmd_ack, ack.to_payload(), qos=1)

    def handle(self, payload: bytes) -> None:
        self.received += 1
        try:
            command = Command.from_payload(payload)
        except SchemaError as exc:
            self.invalid += 1
            command_id = extract_command_id(payload)
            logger.warning("MQTT: malformed command (%s), id %s, payload %r", exc, command_id, payload[:80])
            if command_id is not None:
                self._send(self._ack(command_id, None, False, f"malformed command: {exc}"))
            return
        cached = self._acks.get(command.id)
        if cached is not None:
            # A QoS 1 redelivery: answer again, do not act twice.
            self._send(cached)
            return
        ack = self._execute(command)
        self._acks[command.id] = ack
        while len(self._acks) > _ACK_CACHE:
            self._acks.popitem(last=False)
        self._send(ack)

    def _execute(self, command: Command) -> CommandAck:
        name = command.command
        if name is CommandName.PING:
            return self._ack(command.id, name.value, True)
        callback = self.callback
        if callback is None:
            return self._ack(command.id, name.value, False, f"no handler for {name.value} on this device")
        try:
            callback(command)
        except Exception as exc:
            logger.warning("MQTT: command %s (%s) failed: %s", name.value, command.id, exc)
            return self._ack(command.id, name.value, False, f"{type(exc).__name__}: {exc}")
        if name in (CommandName.PAUSE, CommandName.RESUME):
            self.connection.set_paused(name is CommandName.PAUSE)
            logger.info("MQTT: sensing %s by command %s", "paused" if self.connection.paused else "resumed", command.id)
        return self._ack(command.id, name.value, True)
