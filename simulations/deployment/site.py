"""`fedicu site start`: a hospital's SuperNode, started and supervised in one command.

The SuperNode dials the federation's SuperLink over TLS, authenticates with the site's private
key, and runs the fedicu ClientApp on the site's data folder for every message the server
sends (Flower starts those processes itself). Everything lives under the site's state folder:
Flower's FLWR_HOME, the privacy ledgers the ClientApp keeps, and `logs/supernode.log`.
Stopping the command (Ctrl-C, SIGTERM from a service manager, SIGHUP from a closed terminal)
stops the SuperNode and every process below it; a SuperNode that ends on its own ends the
command with exit code 1, its own exit code and the end of its log in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedicu.shared.datasets import DataSource
from fedicu.simulations.deployment.processes import ProcessGroup, flower_config

SUPERNODE = "supernode"  # its name in the group: logs/supernode.log


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
        args = ["flower-supernode", "--superlink", self.superlink, "--port", str(self.runtime_port)]
        args += ["--node-config", flower_config(self.node_config())]
        if self.ca is None:
            return [*args, "--insecure"]
        assert self.key is not None
        return [*args, "--root-certificates", str(self.ca.resolve()),
                "--auth-supernode-private-key", str(self.key.resolve())]  # fmt: skip


class SiteStopped(RuntimeError):
    """The SuperNode ended on its own; the message holds its exit code and the end of its log."""


def run(site: Site, on_status: Callable[[str], None]) -> None:
    """Start the site's SuperNode and wait on it until it ends or the command is stopped; either
    way, stop everything it started."""
    site.state_dir.mkdir(parents=True, exist_ok=True)
    with ProcessGroup(site.state_dir / "flwr-home", site.state_dir / "logs", site.state_dir) as group:
        process = group.start(SUPERNODE, site.supernode_args())
        on_status(
            f"SuperNode of {site.hospital} started (process {process.pid}), dialing {site.superlink}; "
            f"log: {group.log(SUPERNODE)}"
        )
        code = process.wait()  # until it ends; a stop signal to this command interrupts the wait
        raise SiteStopped(
            f"the SuperNode ended with exit code {code}; see {group.log(SUPERNODE)}:\n{group.tail(SUPERNODE)}"
        )
