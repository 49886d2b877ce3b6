"""`fedicu site start`: a hospital's SuperNode, started and supervised in one command.

The SuperNode dials the federation's SuperLink over TLS and authenticates with the site's
private key; beside it runs one long-lived fedicu ClientApp process (`client/resident.py`)
that answers every message the server sends, keeping the site's stays in memory between them.
Everything lives under the site's state folder: Flower's FLWR_HOME, the privacy ledgers the
ClientApp keeps, and `logs/supernode.log` and `logs/clientapp.log`. A ClientApp process that
ends is started again; stopping the command (Ctrl-C, SIGTERM from a service manager, SIGHUP
from a closed terminal) stops both and every process below them; a SuperNode that ends on its
own ends the command with exit code 1, its own exit code and the end of its log in the message.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedicu.shared.datasets import DataSource
from fedicu.simulations.deployment.processes import ProcessGroup, flower_config

SUPERNODE, CLIENTAPP = "supernode", "clientapp"  # their names in the group: logs/<name>.log
SUPERVISE_SECONDS = 0.5
PYTHON = Path(sys.executable).name  # this interpreter, found beside it as every command is
ACTIVATION_REFUSED = b"Failed to activate SuperNode"  # Flower's SuperNode, in its log
ACTIVATED = b"SuperNode ID:"
ACTIVATION_RETRY_SECONDS = 2.0  # soon after the SuperLink times the old one out: few rounds missed
CRASH_LOOP_SECONDS, CRASH_LOOP_RESTARTS = 120.0, 3  # more restarts than that within that: give up


@dataclass(frozen=True)
class Site:
    """How one hospital joins: its data, the SuperLink, its credentials and its state folder."""

    hospital: str
    source: DataSource  # the site's data as the ClientApp reads it (the task is the server's)
    superlink: str  # HOST:PORT
    state_dir: Path
    ca: Path | None  # None: insecure, for a rehearsal on a trusted network only
    key: Path | None
    runtime_port: int
    rejoin_timeout: float = 90.0  # seconds to keep trying while the SuperLink refuses the SuperNode

    def node_config(self) -> dict:
        """What the ClientApp reads of the site (`shared.federation.site_source`, client_app)."""
        source = self.source
        config = {
            "hospital": self.hospital,
            "data-dir": str(Path(source.data_dir).resolve()),
            "data-format": source.format,
            "state-dir": str(self.state_dir.resolve()),
            "strict": source.strict,
        }
        config |= {"labels": str(Path(source.labels).resolve())} if source.labels else {}
        return config | ({"mapping": str(Path(source.mapping).resolve())} if source.mapping else {})

    def supernode_args(self) -> list[str]:
        args = supernode_args(self.superlink, self.runtime_port, self.node_config())
        if self.ca is None:
            return [*args, "--insecure"]
        assert self.key is not None
        return [*args, "--root-certificates", str(self.ca.resolve()),
                "--auth-supernode-private-key", str(self.key.resolve())]  # fmt: skip


def supernode_args(superlink: str, runtime_port: int, node_config: dict) -> list[str]:
    """Flower's SuperNode (`client/supernode.py`), leaving its ClientApp tasks to the long-lived
    process of `clientapp_args` on the loopback port `runtime_port` (Flower's Runtime API)."""
    return [PYTHON, "-m", "fedicu.client.supernode", "--superlink", superlink, "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", flower_config(node_config)]  # fmt: skip


def clientapp_args(runtime_port: int, supernode_pid: int) -> list[str]:
    """The fedicu ClientApp process of the SuperNode `supernode_pid` (`client/resident.py`)."""
    return [PYTHON, "-m", "fedicu.client.resident",
            "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--parent-pid", str(supernode_pid)]  # fmt: skip


class SiteStopped(RuntimeError):
    """The SuperNode ended on its own, or its ClientApp kept ending; the message holds the exit
    code and the end of the log."""


def run(site: Site, on_status: Callable[[str], None]) -> None:
    """Start the site's SuperNode and its ClientApp and supervise them until the SuperNode ends
    or the command is stopped; either way, stop everything they started.

    A SuperNode the SuperLink refuses is started again every `ACTIVATION_RETRY_SECONDS` for up
    to `site.rejoin_timeout` seconds: after a crash, the SuperLink counts the site's previous
    SuperNode online until its heartbeats are overdue (60 s with Flower's defaults)."""
    site.state_dir.mkdir(parents=True, exist_ok=True)
    with ProcessGroup(site.state_dir / "flwr-home", site.state_dir / "logs", site.state_dir) as group:
        first_refusal = None
        while True:
            code, refused = _run_once(site, group, on_status)
            if not refused:
                raise SiteStopped(
                    f"the SuperNode ended with exit code {code}; see {group.log(SUPERNODE)}:\n{group.tail(SUPERNODE)}"
                )
            if first_refusal is None:
                first_refusal = time.monotonic()
                on_status(
                    "the SuperLink refused the SuperNode: its key is not registered, or the site's previous "
                    f"SuperNode is not yet timed out there; trying again every {ACTIVATION_RETRY_SECONDS:.0f} s "
                    f"for up to {site.rejoin_timeout:.0f} s"
                )
            if time.monotonic() - first_refusal + ACTIVATION_RETRY_SECONDS > site.rejoin_timeout:
                raise SiteStopped(
                    f"the SuperLink refused the SuperNode for {site.rejoin_timeout:.0f} s: is the site's key "
                    f"registered there? See {group.log(SUPERNODE)}:\n{group.tail(SUPERNODE)}"
                )
            time.sleep(ACTIVATION_RETRY_SECONDS)


def _run_once(site: Site, group: ProcessGroup, on_status: Callable[[str], None]) -> tuple[int, bool]:
    """Run the SuperNode until it ends, and its ClientApp once the SuperLink has let it in
    (started again when it ends): the SuperNode's exit code, and whether the SuperLink refused
    to activate it."""
    log = group.log(SUPERNODE)
    log_start = log.stat().st_size if log.exists() else 0
    supernode = group.start(SUPERNODE, site.supernode_args())
    on_status(f"SuperNode of {site.hospital} started (process {supernode.pid}), dialing {site.superlink}; log: {log}")
    clientapp: subprocess.Popen | None = None
    restarts: list[float] = []
    while (code := supernode.poll()) is None:  # a stop signal to this command interrupts the wait
        if clientapp is None and ACTIVATED in _since(log, log_start):
            clientapp = group.start(CLIENTAPP, clientapp_args(site.runtime_port, supernode.pid))
            on_status(f"joined; ClientApp started (process {clientapp.pid}); log: {group.log(CLIENTAPP)}")
        elif clientapp is not None and clientapp.poll() is not None:
            restarts = [t for t in restarts if time.monotonic() - t < CRASH_LOOP_SECONDS] + [time.monotonic()]
            if len(restarts) > CRASH_LOOP_RESTARTS:
                raise SiteStopped(
                    f"the ClientApp ended {len(restarts)} times within {CRASH_LOOP_SECONDS:.0f} s, last with "
                    f"exit code {clientapp.returncode}; see {group.log(CLIENTAPP)}:\n{group.tail(CLIENTAPP)}"
                )
            on_status(f"the ClientApp ended (exit code {clientapp.returncode}); starting it again")
            clientapp = group.start(CLIENTAPP, clientapp_args(site.runtime_port, supernode.pid))
        time.sleep(SUPERVISE_SECONDS)
    if clientapp is not None:
        group.kill(CLIENTAPP)  # it ends with its SuperNode anyway; now, not at its next check
    return code, ACTIVATION_REFUSED in _since(log, log_start)


def _since(log: Path, offset: int) -> bytes:
    """What a log gained after `offset` bytes."""
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read()
