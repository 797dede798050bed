"""A real mosquitto broker on a free loopback port, with its own config, for the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that did not sign the server certificate


class Broker:
    def __init__(self, workdir: Path, tls: TlsFiles | None = None, port: int | None = None,
                 bridge_to: list[int] | None = None, persistent: bool = False) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        # persistent: sessions, their subscriptions and queued messages survive a restart (saved
        # when mosquitto is stopped), as on a production broker
        conf += ["persistence true", f"persistence_location {self.dir}/"] if persistent else ["persistence false"]
        if os.geteuid() == 0:
            conf.append("user root")  # else mosquitto drops to its own user and cannot read the test's files
        if tls:
            conf += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                     "require_certificate true"]
        for remote in bridge_to or []:
            # a mosquitto bridge, as a site broker joins a central one: every edgeagent topic both
            # ways, MQTT 5 (Message Expiry and retained flags cross it), reconnecting within 1 s
            conf += [f"connection bridge-{self.port}-to-{remote}", f"address 127.0.0.1:{remote}",
                     "topic edgeagent/# both 1", "bridge_protocol_version mqttv50", "cleansession true",
                     "restart_timeout 1", "notifications false", "try_private true", "start_type automatic"]
        self.conf = self.dir / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.log = self.dir / f"mosquitto-{self.port}.log"

    def start(self) -> "Broker":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self._fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not open its port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_fh", None):
            self._fh.close()

    def restart(self) -> None:
        self.stop()
        self.start()
