"""Test certificates made with `cryptography`: a CA, a server cert for 127.0.0.1, a client cert."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.broker import TlsFiles


def _key(path: Path):
    k = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return k


def _cert(path: Path, subject: str, key, issuer_name, issuer_key, *, ca: bool, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = b.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def make_test_pki(d: Path) -> TlsFiles:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key(d / "ca.key")
    ca = _cert(d / "ca.pem", "edgeagent test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeagent test CA")]),
               ca_key, ca=True)
    sk = _key(d / "server.key")
    _cert(d / "server.pem", "localhost", sk, ca.subject, ca_key, ca=False,
          san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    ck = _key(d / "client.key")
    _cert(d / "client.pem", "test-dev", ck, ca.subject, ca_key, ca=False)
    ok = _key(d / "other-ca.key")
    _cert(d / "other-ca.pem", "some other CA", ok, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")]),
          ok, ca=True)
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
                    d / "other-ca.pem")
