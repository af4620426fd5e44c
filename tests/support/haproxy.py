"""A real HAProxy in front of gateway replicas, as examples/replicas/haproxy.cfg does it
(plain HTTP here, on a free loopback port): health checks on /healthz, a request that
cannot reach a replica is retried on another. Really killed and restarted by the tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.processes import Service, free_port, wait_for_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class HaProxy:
    def __init__(
        self,
        directory: Path,
        backends: dict[str, int],
        port: int | None = None,
        tls_pem: Path | None = None,
        checks: bool = True,
    ) -> None:
        """``backends``: replica name -> its port on 127.0.0.1. ``tls_pem``: terminate TLS
        with this certificate and key (one PEM file), as a TLS proxy in front does. Without
        ``checks`` a backend is never marked down (one backend: nowhere else to go, and a
        health check slow on a loaded machine would cut the requests in flight)."""
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls_pem is not None
        tls = f" ssl crt {tls_pem}" if tls_pem is not None else ""
        self.config = directory / "haproxy.cfg"
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{port}{' check' if checks else ''}"
            for name, port in backends.items()
        )
        self.config.write_text(
            "global\n    maxconn 1024\n\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 60s\n"
            "    timeout server 60s\n    retries 3\n    option redispatch 1\n"
            "    retry-on conn-failure\n\n"
            f"frontend gateway\n    bind 127.0.0.1:{self.port}{tls}\n"
            "    default_backend replicas\n\n"
            "backend replicas\n    balance roundrobin\n    option httpchk GET /healthz\n"
            "    http-check expect status 200\n"
            "    default-server inter 200ms fall 1 rise 2 on-marked-down shutdown-sessions\n"
            f"{servers}\n"
        )
        self._service: Service | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> HaProxy:
        argv = [HAPROXY, "-db", "-f", str(self.config)]
        self._service = Service(argv, self.directory / "haproxy.log").start()
        wait_for_port(self.port, timeout=10)
        return self

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()

    def log(self) -> str:
        return self._service.log() if self._service is not None else ""
