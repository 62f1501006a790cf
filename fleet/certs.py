"""A small certificate authority for one school's broker, built on pyca/cryptography (OpenSSL underneath).

It makes the CA, the broker's server certificate, one client certificate per device, server instance and
teacher feed, and a revocation list that the broker checks. Every call is idempotent: an existing key is never
replaced, and a certificate is issued again only when it is missing, close to expiry, or no longer says what
it should (a changed host list, say). Revoking a name puts its serial on the list and moves its key and
certificate aside, so that the next `make certs` gives that name a new key and never reuses the old one.

Layout of the directory (mode 0700, never committed):
    ca.key ca.crt crl.pem revoked.json
    broker.key broker.crt
    clients/<name>.key clients/<name>.crt
    revoked/<name>-<serial>.{key,crt}
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device.common.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest that browsers and most TLS stacks accept for a leaf certificate
RENEW_DAYS = 30  # a certificate closer than this to its end is issued again
CRL_DAYS = 365
CRL_RENEW_DAYS = 90
ROLES = ("device", "server", "feed", "monitor")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (never world-readable, not even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _load_or_make_key(path: Path, made: list[str]) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a readable private key ({exc}); move it away to make a new one") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not an EC key; move it away to make a new one")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    made.append(f"key {path.name}")
    return key


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass
class Report:
    """What one run did, for the technician: created, renewed, kept."""

    created: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for what, items in (("created", self.created), ("renewed", self.renewed)):
            out += [f"{what}: {item}" for item in items]
        out.append(f"kept: {len(self.kept)} certificate(s) unchanged")
        return out


class CertificateAuthority:
    """The CA in `directory`, made on first use."""

    def __init__(self, directory: Path, report: Report | None = None, name: str = "Aula MQTT CA"):
        self.dir = Path(directory)
        self.report = report or Report()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.dir.chmod(0o700)
            (self.dir / "clients").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.dir} for certificates: {exc.strerror or exc}") from None
        made: list[str] = []
        self.key = _load_or_make_key(self.dir / "ca.key", made)
        cert = _load_cert(self.dir / "ca.crt")
        if cert is None or cert.public_key().public_numbers() != self.key.public_key().public_numbers():
            if cert is None and not made and (self.dir / "ca.crt").exists():
                raise ConfigError(f"{self.dir / 'ca.crt'} is unreadable; restore it from a backup")
            cert = self._self_sign(name)
            _write_public(self.dir / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
            self.report.created.append("CA ca.crt")
        else:
            self.report.kept.append("ca.crt")
        self.cert = cert

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_file(self) -> Path:
        return self.dir / "crl.pem"

    def _self_sign(self, name: str) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _issue(self, key, common_name: str, role: str, sans: list[x509.GeneralName], server: bool) -> x509.Certificate:
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=LEAF_DAYS), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                         content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def _ensure(self, key_path: Path, cert_path: Path, common_name: str, role: str, sans: list[x509.GeneralName],
                server: bool) -> Path:
        made: list[str] = []
        key = _load_or_make_key(key_path, made)
        cert = _load_cert(cert_path)
        label = f"{role} {common_name}"
        why = None
        if cert is None:
            why = "new"
        elif cert.public_key().public_numbers() != key.public_key().public_numbers():
            why = "its key changed"
        elif cert.issuer != self.cert.subject or not self._signed_by_ca(cert):
            why = "another CA signed it"
        elif cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
            why = "it expires soon"
        elif _common_name(cert) != common_name or self._sans_of(cert) != sorted(map(str, sans)):
            why = "its names changed"
        elif cert.serial_number in self.revoked_serials():
            why = "it was revoked"
        if why is None:
            self.report.kept.append(label)
            return cert_path
        cert = self._issue(key, common_name, role, sans, server)
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        (self.report.created if why == "new" else self.report.renewed).append(
            label if why == "new" else f"{label} ({why})")
        return cert_path

    def _signed_by_ca(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
            return True
        except (ValueError, TypeError, Exception):  # InvalidSignature and friends
            return False

    @staticmethod
    def _sans_of(cert: x509.Certificate) -> list[str]:
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return sorted(str(n) for n in ext)

    def broker(self, hosts: list[str]) -> tuple[Path, Path]:
        """The broker's key and certificate, valid for every name in `hosts` (DNS names or IP addresses)."""
        if not hosts:
            raise ConfigError("the broker certificate needs at least one host name or address (BROKER_HOSTS)")
        cert = self._ensure(self.dir / "broker.key", self.dir / "broker.crt", hosts[0], "broker", _sans(hosts), True)
        return self.dir / "broker.key", cert

    def client(self, name: str, role: str) -> tuple[Path, Path]:
        """A client's key and certificate; its common name is its MQTT user name (and, for a device, client id)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        key_path, cert_path = self.client_paths(name)
        self._ensure(key_path, cert_path, name, role, [], False)
        return key_path, cert_path

    def client_paths(self, name: str) -> tuple[Path, Path]:
        return self.dir / "clients" / f"{name}.key", self.dir / "clients" / f"{name}.crt"

    # ---- revocation --------------------------------------------------------------------------------------------

    def revoked_serials(self) -> dict[int, str]:
        path = self.dir / "revoked.json"
        if not path.exists():
            return {}
        try:
            return {int(k): v for k, v in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not readable ({exc}); restore it from a backup") from None

    def revoke(self, name: str) -> int:
        """Revoke the current certificate of `name`; its key and certificate move to revoked/. Returns the serial."""
        key_path, cert_path = self.client_paths(name)
        cert = _load_cert(cert_path)
        if cert is None:
            raise ConfigError(f"no certificate for {name!r} in {self.dir / 'clients'}")
        revoked = self.revoked_serials()
        revoked[cert.serial_number] = name
        _write_public(self.dir / "revoked.json", json.dumps({str(k): v for k, v in revoked.items()}, indent=1).encode())
        aside = self.dir / "revoked"
        aside.mkdir(mode=0o700, exist_ok=True)
        os.replace(cert_path, aside / f"{name}-{cert.serial_number:x}.crt")
        if key_path.exists():
            os.replace(key_path, aside / f"{name}-{cert.serial_number:x}.key")
        self.write_crl(force=True)
        return cert.serial_number

    def write_crl(self, force: bool = False) -> Path:
        """The revocation list the broker checks (crlfile); issued again when it nears its next update."""
        current = None
        if self.crl_file.exists() and not force:
            try:
                current = x509.load_pem_x509_crl(self.crl_file.read_bytes())
            except ValueError:
                current = None
        revoked = self.revoked_serials()
        if current is not None and current.next_update_utc is not None \
                and current.next_update_utc - _now() > dt.timedelta(days=CRL_RENEW_DAYS) \
                and {r.serial_number for r in current} == set(revoked) and self._crl_signed(current):
            self.report.kept.append("crl.pem")
            return self.crl_file
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=CRL_DAYS)))
        for serial in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        crl = builder.sign(self.key, hashes.SHA256())
        _write_public(self.crl_file, crl.public_bytes(serialization.Encoding.PEM))
        self.report.renewed.append(f"crl.pem ({len(revoked)} revoked)")
        return self.crl_file

    def _crl_signed(self, crl: x509.CertificateRevocationList) -> bool:
        return crl.issuer == self.cert.subject and crl.is_signature_valid(self.key.public_key())
