"""A publisher that prints each window as one JSON line instead of sending it: `python -m device demo`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from device.contract import DeviceState, EmotionEvent
from device.mqtt.config import MqttConfig


@dataclass
class SinkStats:
    """What the sink printed, for the service's final figures."""

    printed: int = 0
    state: str = DeviceState.ONLINE.value

    def to_dict(self) -> dict[str, Any]:
        return {"printed": self.printed, "state": self.state}


class StdoutSink:
    """Stands in for EventPublisher: the same events, numbered in order, written to `out` (standard output)."""

    def __init__(self, config: MqttConfig, *, health_provider=None, out: TextIO | None = None):
        self.config = config
        self.out = out or sys.stdout
        self._stats = SinkStats()

    def on_command(self, callback) -> None:
        """No commands arrive without a broker."""

    def start(self) -> None:
        pass

    def publish_event(self, event: EmotionEvent) -> EmotionEvent:
        self._stats.printed += 1
        event.seq = self._stats.printed
        print(json.dumps(event.to_dict()), file=self.out, flush=True)
        return event

    def publish_status(self, state: DeviceState | str, reason: str | None = None) -> None:
        self._stats.state = DeviceState(state).value

    def stop(self, clean: bool = True) -> None:
        pass

    def stats(self) -> SinkStats:
        return self._stats
