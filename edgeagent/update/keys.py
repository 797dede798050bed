"""Ed25519 keys: generation, loading, key ids (sha256 of the raw 32-byte public key)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeagent.errors import EdgeAgentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _crypto() -> tuple[Any, Any]:
    """cryptography's serialization and ed25519, imported on first use: a daemon that gets no
    update never pays for them (about 6.5 MiB of RSS)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


class KeyError_(EdgeAgentError):
    code = "keys.invalid"


def keyid(pub: Ed25519PublicKey) -> str:
    serialization, _ = _crypto()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(out_dir: str | os.PathLike) -> str:
    """Write DIR/edgeagent.key (PKCS8 PEM, 0600) and DIR/edgeagent.pub; never overwrite."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / "edgeagent.key", d / "edgeagent.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise EdgeAgentError("keys.exists", f"{p}: already exists; refusing to overwrite a key")
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = key.public_key()
    pub_path.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return keyid(pub)


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise KeyError_(message=f"{path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise KeyError_(message=f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyError_(message=f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise KeyError_(message=f"{path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise KeyError_(message=f"{path}: not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyError_(message=f"{path}: not an Ed25519 key")
    return key


def load_trusted_keys(paths: list[str]) -> dict[str, Ed25519PublicKey]:
    """Each path is a PEM public key or a directory of *.pub / *.pem files."""
    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        path = Path(p)
        files = sorted(list(path.glob("*.pub")) + list(path.glob("*.pem"))) if path.is_dir() else [path]
        for f in files:
            k = load_public_key(f)
            keys[keyid(k)] = k
    return keys
