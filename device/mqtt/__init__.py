"""The device's MQTT layer: config, typed status and command messages, credentials, and the EventPublisher."""

from device.mqtt.config import (
    BrokerAddress,
    MqttConfig,
    QueueConfig,
    TlsConfig,
    broker_url_arg,
    load_mqtt_config,
    parse_broker_url,
)
from device.mqtt.credentials import RedactingFilter, install_redaction, redact, resolve_password
from device.mqtt.messages import Command, CommandAck, CommandName, StatusMessage, extract_command_id
from device.mqtt.publisher import EventPublisher, PublisherStats, Topics

__all__ = [
    "BrokerAddress",
    "Command",
    "CommandAck",
    "CommandName",
    "EventPublisher",
    "MqttConfig",
    "PublisherStats",
    "QueueConfig",
    "RedactingFilter",
    "StatusMessage",
    "TlsConfig",
    "Topics",
    "broker_url_arg",
    "extract_command_id",
    "install_redaction",
    "load_mqtt_config",
    "parse_broker_url",
    "redact",
    "resolve_password",
]
