"""Throwaway redis-server processes for tests that need a password or TLS (ports 18200-18299)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {proc.stdout.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not listen on {port}")


def make_certs(folder: Path) -> dict:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, crt = (folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=recfeast-test-ca",
        "-keyout", str(ca_key), "-out", str(ca))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return {"ca": ca, "cert": crt, "key": key}


@contextmanager
def redis_server(port: int, password: str | None = None, tls: dict | None = None, workdir: Path | None = None):
    """Run ``redis-server`` on ``port`` (plain, or TLS only with ``tls`` certs), no persistence; stop it after."""
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed")
    args = ["redis-server", "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    if workdir is not None:
        args += ["--dir", str(workdir)]
    if tls:
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls["cert"]),
                 "--tls-key-file", str(tls["key"]), "--tls-ca-cert-file", str(tls["ca"]), "--tls-auth-clients", "no"]
    else:
        args += ["--port", str(port)]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RestartableRedis:
    """A plain redis-server on ``port`` that a test can stop and start again (no persistence)."""

    def __init__(self, port: int, workdir: Path | None = None):
        self.port, self.workdir, self._cm = port, workdir, None

    def start(self) -> None:
        self._cm = redis_server(self.port, workdir=self.workdir)
        self._cm.__enter__()

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None
