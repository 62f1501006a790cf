"""How either end reaches the broker: the URL, the protocol, TLS files and the credentials; strict and documented."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from device.common.config_loader import StrictModel

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: host, port and whether the connection uses TLS."""

    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse `mqtt://host[:port]` or `mqtts://host[:port]`; raise ValueError naming what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("broker URL is empty; expected mqtt://host:port or mqtts://host:port")
    url = url.strip()
    if "://" not in url:
        raise ValueError(f"broker URL {url!r} has no scheme; write mqtt://{url} (plain) or mqtts://{url} (TLS)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL scheme {parts.scheme!r} is not supported; use mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        # A password in a URL ends up in shell history, process lists and logs.
        raise ValueError("broker URL must not carry credentials; set username and password_env or password_credential")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must be only scheme://host:port, without a path or query")
    host = parts.hostname
    if not host:
        raise ValueError(f"broker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {url!r} has an invalid port; use a number from 1 to 65535") from None
    if port == 0:
        raise ValueError(f"broker URL {url!r} has port 0; use a number from 1 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)  # urlsplit accepts any bracketed text; make sure it is an address
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid IPv6 address {host!r}") from None
    return BrokerAddress(host=host, port=port or DEFAULT_PORTS[scheme], tls=scheme == "mqtts")


def broker_url_arg(value: str) -> str:
    """argparse `type=` for `--broker`: returns the normalised URL or raises a readable usage error."""
    try:
        return parse_broker_url(value).url
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _protocol_number(value: Any) -> Any:
    # YAML reads `protocol: 5` as an integer.
    return str(value) if value == 5 and not isinstance(value, bool) else value


# Field types shared by the device's and the server's MQTT settings.
BrokerUrl = Annotated[str, AfterValidator(lambda value: parse_broker_url(value).url)]
MqttProtocol = Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol_number)]


class TlsConfig(StrictModel):
    """TLS for mqtts:// brokers."""

    ca_file: Path | None = Field(
        None, description="CA bundle that signed the broker's certificate; empty uses the system's trusted CAs."
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM) when the broker requires one.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(
        False,
        description="Skip the broker host-name check. Only for lab tests: it allows a man in the middle.",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class BrokerConnection(StrictModel):
    """Broker URL, protocol, keep-alive, reconnect pacing, TLS and credentials: the device's and the server's."""

    broker: BrokerUrl = Field(
        "mqtt://localhost:1883", description="Broker URL: mqtt://host:port, or mqtts://host:port (TLS)."
    )
    protocol: MqttProtocol = Field(
        "5", description="MQTT protocol version; 3.1.1 for brokers that speak only that (e.g. amqtt)."
    )
    keepalive: int = Field(
        30, ge=5, le=3600, description="Seconds between keep-alives; the broker sends the last will after 1.5x this."
    )
    reconnect_min_s: float = Field(1.0, gt=0, le=60, description="First reconnect delay; it doubles on each failure.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS files; used only with mqtts://.")
    username: str | None = Field(None, description="Broker user name; none connects anonymously.")
    password_env: str | None = Field(None, description="Name of the environment variable that holds the password.")
    password_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) with the password: $CREDENTIALS_DIRECTORY/<name>.",
    )

    @field_validator("password_credential")
    @classmethod
    def _credential_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ValueError("password_credential is a credential name (a file name), not a path")
        return value

    @model_validator(mode="after")
    def _connection_fields(self) -> BrokerConnection:
        if self.password_env and self.password_credential:
            raise ValueError("set password_env or password_credential, not both")
        if (self.password_env or self.password_credential) and not self.username:
            raise ValueError("a password needs a username")
        tls_set = self.tls.ca_file or self.tls.cert_file or self.tls.insecure
        if tls_set and not self.address.tls:
            raise ValueError("tls settings need an mqtts:// broker URL")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)
