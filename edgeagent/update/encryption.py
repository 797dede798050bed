"""Encrypted payloads: age (X25519 recipients, streaming authenticated encryption) through pyrage.

Model weights are often someone's intellectual property and payload URLs are often public object
storage, so a payload may be encrypted to the devices that should run it. age is a standard
format with a well-kept implementation (the Rust `age` crate behind pyrage), so nothing here is
cryptography of our own: this module loads identities and recipients, encrypts a file to a file
for the publisher, and decrypts as a stream for the device, never holding a model in memory and
never writing plaintext anywhere but the slot it is building.

The manifest signs the ciphertext's sha256 (the download is checked against it before a byte is
decrypted) and the target's; `signed.payload.encryption` names the plaintext size and the
recipients as ids (sha256 of the `age1...` string, 16 hex digits), so a device that is not among
them refuses before it downloads anything (`update.not_for_this_device`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

from edgeagent.update.errors import UpdateRejected

FORMAT = "age"
_QUEUE_PIECES = 64  # pieces of plaintext (8 KiB each, pyrage's write size) between a decryptor and its reader


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:  # pragma: no cover - a dependency of the package
        raise UpdateRejected("update.decrypt_failed", "pyrage is not installed (pip install pyrage)") from None
    return pyrage


def recipient_id(recipient: str) -> str:
    """The id a manifest lists a recipient by: public keys are not secret, but a short id keeps a
    manifest for a fleet of hundreds small."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


class Identity:
    """A device's age identity (`[update] identity`), loaded once per update."""

    def __init__(self, secret: Any) -> None:
        self._secret = secret
        self.recipient = str(secret.to_public())
        self.id = recipient_id(self.recipient)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Identity":
        x25519 = _pyrage().x25519
        try:
            lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise UpdateRejected("update.not_for_this_device",
                                 f"[update] identity {path}: {getattr(e, 'strerror', None) or e}") from None
        keys = [ln for ln in lines if ln.startswith("AGE-SECRET-KEY-")]
        if len(keys) != 1:
            raise UpdateRejected("update.not_for_this_device", f"[update] identity {path}: expected one "
                                                               "AGE-SECRET-KEY-1... line")
        try:
            return cls(x25519.Identity.from_str(keys[0]))
        except Exception:  # noqa: BLE001 - pyrage's IdentityError, without echoing the secret
            raise UpdateRejected("update.not_for_this_device", f"[update] identity {path}: not an age X25519 "
                                                               "identity") from None


def generate_identity(path: str | os.PathLike, *, owner: str | None = None) -> str:
    """Write a new identity to `path` (mode 0400, never over an existing one); its recipient."""
    x25519 = _pyrage().x25519
    secret = x25519.Identity.generate()
    recipient = str(secret.to_public())
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# edgeagent device identity\n# public key: {recipient}\n{secret}\n")
        fh.flush()
        os.fsync(fh.fileno())
    if owner:
        import pwd

        pw = pwd.getpwnam(owner)
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return recipient


def load_recipients(path: str | os.PathLike) -> list[str]:
    """A recipients file (age's format: one `age1...` per line, `#` comments): ValueError if bad."""
    x25519 = _pyrage().x25519
    out = []
    for n, ln in enumerate(Path(path).read_text().splitlines(), 1):
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        try:
            x25519.Recipient.from_str(ln)
        except Exception:  # noqa: BLE001 - pyrage's RecipientError
            raise ValueError(f"{path}:{n}: not an age X25519 recipient (age1...)") from None
        out.append(ln)
    if not out:
        raise ValueError(f"{path}: no recipients")
    return out


def encrypt_file(src: Path, dst: Path, recipients: list[str]) -> None:
    """Publisher side: src encrypted to every recipient, as a stream."""
    pyrage = _pyrage()
    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        pyrage.encrypt_io(fi, fo, keys)
        fo.flush()
        os.fsync(fo.fileno())


def _refusal(e: BaseException) -> UpdateRejected:
    if "no matching keys" in str(e).lower():
        return UpdateRejected("update.not_for_this_device", "the payload is not encrypted to this device's identity")
    return UpdateRejected("update.decrypt_failed", f"the payload does not decrypt: {e or type(e).__name__}")


def decrypt_to(path: Path, identity: Identity, write: Callable[[bytes], Any]) -> None:
    """Decrypt the whole ciphertext at `path`, handing each piece of plaintext to `write` (which
    may raise to stop: that exception propagates unchanged)."""
    pyrage = _pyrage()

    class _Sink:
        def write(self, b: bytes) -> int:
            write(bytes(b))
            return len(b)

    with open(path, "rb") as fi:
        try:
            pyrage.decrypt_io(fi, _Sink(), [identity._secret])
        except (pyrage.DecryptError, OSError, ValueError) as e:
            raise _refusal(e) from None


class _Stop(Exception):
    pass


class DecryptingReader:
    """The plaintext of an age file from `offset` on, read forward as a stream.

    A bsdiff4 patch is read as three streams at once (control, diff and extra blocks); with an
    encrypted patch each is decrypted by its own thread from the start of the file, skipping
    what comes before its offset, through a bounded queue, so the plaintext exists only in
    pieces of 8 KiB on their way to the patcher."""

    def __init__(self, path: Path, identity: Identity, offset: int = 0) -> None:
        self._q: queue.Queue = queue.Queue(_QUEUE_PIECES)
        self._buf = bytearray()
        self._closed = threading.Event()
        self._skip = offset
        self._eof = False
        self._t = threading.Thread(target=self._run, args=(Path(path), identity), name="decrypt", daemon=True)
        self._t.start()

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop()

    def _run(self, path: Path, identity: Identity) -> None:
        def write(b: bytes) -> None:
            if self._skip:
                if len(b) <= self._skip:
                    self._skip -= len(b)
                    return
                b, self._skip = b[self._skip:], 0
            self._put(b)

        end: BaseException | None = None  # what the reader gets after the last piece: None is the end
        try:
            decrypt_to(path, identity, write)
        except _Stop:
            return
        except UpdateRejected as e:
            end = e
        except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
            end = _refusal(e)
        try:
            self._put(end)
        except _Stop:
            pass

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the plaintext)."""
        while len(self._buf) < n and not self._eof:
            item = self._q.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                self._buf += item
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def close(self) -> None:
        self._closed.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._t.join(5.0)

    def __enter__(self) -> "DecryptingReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_plain(path: Path, identity: Identity | None) -> Callable[[int], Any]:
    """`open_at(offset)` for the patcher: forward readers of the payload's plaintext."""
    if identity is None:
        return lambda offset: _FileReader(path, offset)
    return lambda offset: DecryptingReader(path, identity, offset)


class _FileReader:
    """A plain payload from `offset` on (the same interface as DecryptingReader)."""

    def __init__(self, path: Path, offset: int) -> None:
        self._fh: BinaryIO = open(path, "rb")
        self._fh.seek(offset)

    def read(self, n: int) -> bytes:
        return self._fh.read(n)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "_FileReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
