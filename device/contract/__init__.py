"""The contract between device and server: labels, every MQTT message as a typed dataclass, and the topic names.

Standard library only (orjson is used when it is installed), so the server imports the very definitions the device
publishes, and nothing else of the device. `make lint` checks that (import-linter, `.importlinter`).
"""

from device.contract.alerts import DeviceAlert, SiteAlerts
from device.contract.events import COUNT_KEYS, FACES, EmotionEvent, Modality, faces_of
from device.contract.health import HealthMessage
from device.contract.labels import LABELS, NUM_LABELS, VALENCE_AROUSAL, valence_arousal
from device.contract.messages import Command, CommandAck, CommandName, DeviceState, StatusMessage, extract_command_id
from device.contract.schema import MAX_PAYLOAD_BYTES, SCHEMA_VERSION, Message, SchemaError, decode_json, short_reason
from device.contract.summary import RoomSummary
from device.contract.topics import TOPIC_ROOT, DeviceTopics, alerts_topic, parse_device_topic, summary_topic, topic

__all__ = [
    "COUNT_KEYS",
    "FACES",
    "LABELS",
    "MAX_PAYLOAD_BYTES",
    "NUM_LABELS",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "VALENCE_AROUSAL",
    "Command",
    "CommandAck",
    "CommandName",
    "DeviceAlert",
    "DeviceState",
    "DeviceTopics",
    "EmotionEvent",
    "HealthMessage",
    "Message",
    "Modality",
    "RoomSummary",
    "SchemaError",
    "SiteAlerts",
    "StatusMessage",
    "alerts_topic",
    "decode_json",
    "extract_command_id",
    "faces_of",
    "parse_device_topic",
    "short_reason",
    "summary_topic",
    "topic",
    "valence_arousal",
]
