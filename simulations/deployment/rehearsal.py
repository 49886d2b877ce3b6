"""`fedicu deploy-demo`: a real deployment, rehearsed on one machine.

What a hospital deployment runs, as separate OS processes on 127.0.0.1:
- a CA, the SuperLink's certificate and one key pair per site (`server/certs.py`), in OUT/certs;
- one synthetic hospital per site, written in PhysioNet 2012 format to OUT/sites/<site>/ and
  passed through the site check; a held-out test folder for the server in OUT/server-test;
- a SuperLink with TLS and SuperNode authentication, each site's public key registered with
  `flwr supernode register`;
- one SuperNode per site, given the CA certificate, its own key and its own folder;
- the app submitted with `flwr run` (run-config `sites`); its run directory is OUT/run.
Flower's configuration and installed apps live in OUT/flwr-home, every process's log in
OUT/logs. Runtime dependency installation is off: the app runs in this environment, which
already has everything it needs. Every process started is stopped at the end, whatever
happened.
"""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedicu.shared.config import RunConfig
from fedicu.shared.datasets import physionet2012, synthetic
from fedicu.shared.federation import Federation, load_site, site_source
from fedicu.shared.partition import stratified_pick
from fedicu.shared.preprocessing import Sequences
from fedicu.shared.run_dir import CONFIG_FILE, METRICS_JSON, RUN_FILE, RunDirectory
from fedicu.simulations.deployment import certs
from fedicu.simulations.deployment.processes import BIN, ProcessGroup, flower_config
from fedicu.simulations.deployment.site import PYTHON, clientapp_args, supernode_args

CONNECTION = "fedicu-demo"  # the SuperLink connection's name in OUT/flwr-home/config.toml
PROJECT = Path(__file__).resolve().parents[2]  # the app `flwr run` submits
STAYS_PER_SITE = 400
TEST_FRACTION = 0.2
START_TIMEOUT = 60.0
SUPERLINK_DATABASE = "superlink.db"
CLIENTAPP_SUFFIX = "-clientapp"  # a site's ClientApp process is named after its SuperNode
# With --restart-site every round waits this long per site (those sent to the dead SuperNode
# wait it out): every site shares this machine, so a round's work grows with their number.
RESTART_ROUND_SECONDS_PER_SITE = 20.0
STATUS_POLL_SECONDS = 10.0  # how often `wait` asks Flower's CLI while the run directory says "running"


class DeploymentError(RuntimeError):
    """A step of the rehearsal failed; the message says which, and where to look."""


def write_sites(out: Path, sites: int, seed: int) -> tuple[dict[str, Path], Path]:
    """One synthetic hospital per site in PhysioNet format, and the server's test folder."""
    cohort = synthetic.generate(hospitals=sites, stays=STAYS_PER_SITE * sites, seed=seed)
    stays = cohort.stays
    test = stratified_pick(
        stays.index.to_numpy(), stays["label"].to_numpy(), TEST_FRACTION, np.random.default_rng(seed)
    )
    training = stays.drop(index=test)
    folders = {}
    for name in sorted(training["hospital"].unique()):
        folders[name] = out / "sites" / name
        physionet2012.write(cohort.subset(training.index[training["hospital"] == name]), folders[name], "a")
    physionet2012.write(cohort.subset(test), out / "server-test", "a")
    return folders, out / "server-test"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class LocalDeployment(ProcessGroup):
    """A SuperLink and SuperNodes as processes on this machine; `stop` (or leaving the
    `with` block) ends every process they started, children included."""

    def __init__(self, out: Path, sites: list[str], insecure: bool = False):
        super().__init__(out / "flwr-home", out / "logs", out)
        self.out, self.certs = out, out / "certs"
        self.insecure = insecure
        self.port, *node_ports = _free_ports(1 + len(sites))
        self.node_ports = dict(zip(sites, node_ports, strict=True))

    def flwr(self, *args: str) -> dict:
        """Run a Flower CLI command against this SuperLink; its JSON answer."""
        done = subprocess.run(
            [str(BIN / "flwr"), *args, "--format", "json"], env=self.env, cwd=self.out, capture_output=True, text=True
        )
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            answer = {"success": False, "error-message": (done.stdout + done.stderr).strip()[-2000:]}
        if done.returncode or not answer.get("success", False):
            raise DeploymentError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def start_superlink(self) -> None:
        """Start the SuperLink (`server/superlink.py`: TLS and SuperNode authentication unless
        insecure); return once it answers.

        Its state (runs, registered sites) lives in OUT/superlink.db: a SuperLink started again
        after a crash knows them still."""
        security = ["--insecure"] if self.insecure else [
            "--ssl-ca-certfile", str(self.certs / certs.CA_CERT),
            "--ssl-certfile", str(self.certs / certs.SUPERLINK_CERT),
            "--ssl-keyfile", str(self.certs / certs.SUPERLINK_KEY),
            "--enable-supernode-auth",
        ]  # fmt: skip
        self.start(
            "superlink",
            [PYTHON, "-m", "fedicu.server.superlink", *security, "--disable-runtime-dependency-installation",
             "--database", str(self.out / SUPERLINK_DATABASE), "--host", "127.0.0.1", "--port", str(self.port)],
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                    if not self.insecure:
                        ssl.create_default_context(cafile=self.certs / certs.CA_CERT).wrap_socket(
                            raw, server_hostname="127.0.0.1"
                        ).close()
                    break
            except OSError:
                if self.processes["superlink"].poll() is not None or time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the SuperLink did not start; see {self.log('superlink')}:\n{self.tail('superlink')}"
                    ) from None
                time.sleep(0.5)
        config = self.out / "flwr-home" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        trust = "insecure = true" if self.insecure else f'root-certificates = "{self.certs / certs.CA_CERT}"'
        config.write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{trust}\n'
        )

    def register(self, site: str) -> None:
        """Register a site's public key: only registered SuperNodes may join."""
        self.flwr("supernode", "register", str(self.certs / certs.SITES_DIR / f"{site}.pub"), CONNECTION)

    def start_supernode(
        self,
        site: str,
        data_dir: Path,
        *,
        key: Path | None = None,
        trust_ca: bool = True,
        max_retries: int | None = None,
    ) -> subprocess.Popen:
        """A site's SuperNode (dials the SuperLink, authenticates with the site key) and its
        ClientApp (reads `data_dir`), logged as `<site>` and `<site>-clientapp`."""
        node_config = {"data-dir": str(data_dir), "hospital": site, "state-dir": str(self.out / "state" / site)}
        args = supernode_args(f"127.0.0.1:{self.port}", self.node_ports[site], node_config)
        if self.insecure:
            args += ["--insecure"]
        else:
            args += ["--auth-supernode-private-key", str(key or self.certs / certs.SITES_DIR / f"{site}.key")]
        if trust_ca and not self.insecure:
            args += ["--root-certificates", str(self.certs / certs.CA_CERT)]
        if max_retries is not None:
            args += ["--max-retries", str(max_retries)]
        supernode = self.start(site, args)
        self.start(f"{site}{CLIENTAPP_SUFFIX}", clientapp_args(self.node_ports[site], supernode.pid))
        return supernode

    def kill(self, name: str) -> None:
        """SIGKILL a process; a site's SuperNode together with its ClientApp, as a crash of the
        site's machine would."""
        if f"{name}{CLIENTAPP_SUFFIX}" in self.processes:
            super().kill(f"{name}{CLIENTAPP_SUFFIX}")
        super().kill(name)

    def restart_site(self, site: str, data_dir: Path) -> None:
        """Kill a site's SuperNode and ClientApp (its machine fails) and start the site again as
        a hospital does, with `fedicu site start` on the same state folder (its privacy ledgers):
        it keeps trying while the SuperLink still counts the dead SuperNode online."""
        self.kill(site)
        credentials = ["--insecure"] if self.insecure else [
            "--ca", str(self.certs / certs.CA_CERT), "--key", str(self.certs / certs.SITES_DIR / f"{site}.key"),
        ]  # fmt: skip
        self.start(
            site,
            ["fedicu", "site", "start", "--data-dir", str(data_dir), "--superlink", f"127.0.0.1:{self.port}",
             *credentials, "--hospital", site, "--state-dir", str(self.out / "state" / site),
             "--runtime-port", str(self.node_ports[site])],
        )  # fmt: skip

    def submit(self, run_config: dict, extra_run_config: str = "") -> int:
        """`flwr run` the app on this SuperLink; the run's id."""
        args = ["run", str(PROJECT), CONNECTION, "--run-config", flower_config(run_config)]
        if extra_run_config:
            args += ["--run-config", extra_run_config]
        return int(self.flwr(*args)["run-id"])

    def status(self, run_id: int) -> tuple[str, str]:
        """The run's status (`finished:completed`, …) and the SuperLink's words on it."""
        run = self.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"][0]
        return str(run["status"]), str(run.get("status-details", ""))

    def wait(self, run_id: int, run_dir: Path, timeout: float, on_round: Callable[[int], None]) -> None:
        """Until the run finishes: report completed rounds, fail fast when a process dies. Flower's
        CLI (a new process, about a second of CPU that the sites would miss) is asked for the
        run's status every `STATUS_POLL_SECONDS`, and every second once the run directory says
        the run ended."""
        deadline, reported, asked = time.monotonic() + timeout, 0, -STATUS_POLL_SECONDS
        status, details = "", ""
        while True:
            run = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).exists() else {}
            if (done := int(run.get("rounds_completed", 0))) > reported:
                on_round(done)
                reported = done
            if run.get("status", "running") != "running" or time.monotonic() - asked >= STATUS_POLL_SECONDS:
                (status, details), asked = self.status(run_id), time.monotonic()
                if status.startswith("finished"):
                    break
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise DeploymentError(
                        f"{name} stopped (exit code {process.returncode}); see {self.log(name)}:\n{self.tail(name)}"
                    )
            if time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish within {timeout:.0f} s (status {status})")
            time.sleep(1.0)
        if (run_json := run_dir / RUN_FILE).exists():  # the last round may have ended since it was read
            on_round(int(json.loads(run_json.read_text()).get("rounds_completed", 0)))
        if status != "finished:completed":
            raise DeploymentError(self.failure(run_id, run_dir, status, details))

    def failure(self, run_id: int, run_dir: Path, status: str, superlink_details: str) -> str:
        """What is known of a failed run: the server's error, the SuperLink's status details, the
        SuperLink's own errors and the end of the server log."""
        error = json.loads((run_dir / RUN_FILE).read_text()).get("error", "") if (run_dir / RUN_FILE).exists() else ""
        superlink_errors = [
            line[:300] for line in self.tail("superlink", lines=2000).splitlines() if "ERROR" in line or "Error" in line
        ]
        return "\n".join([
            f"the run ended {status}: {error or superlink_details or 'see the server log below'}",
            *([f"the SuperLink says: {superlink_details}"] if error and superlink_details else []),
            *([f"errors in {self.log('superlink')} (last 10):", *superlink_errors[-10:]] if superlink_errors else []),
            "the server log ends:", self.flwr_log(run_id),
        ])  # fmt: skip

    def flwr_log(self, run_id: int) -> str:
        done = subprocess.run(
            [str(BIN / "flwr"), "log", str(run_id), CONNECTION, "--show"],
            env=self.env, cwd=self.out, capture_output=True, text=True,
        )  # fmt: skip
        return "\n".join(done.stdout.splitlines()[-60:])


def rehearse(
    out: Path,
    sites: int,
    rounds: int,
    secagg: bool,
    insecure: bool,
    extra_run_config: str,
    timeout: float,
    on_step: Callable[[str], None],
    on_round: Callable[[int], None],
    restart_site: str = "",
) -> Path:
    """The whole rehearsal into `out` (which must not exist); the run directory. With
    `restart_site`, that site's machine fails once round 1 is complete and the site is
    started again (`LocalDeployment.restart_site`); rounds then time out after
    `RESTART_ROUND_SECONDS_PER_SITE` s per site without it, unless the run-config says otherwise."""
    from fedicu.shared.datasets import DataSource
    from fedicu.shared.site_check import check

    out.mkdir(parents=True)
    folders, test_dir = write_sites(out, sites, seed=0)
    for folder in folders.values():
        if not (report := check(DataSource(format="physionet2012", data_dir=str(folder)))).usable:
            raise DeploymentError(f"site check of {folder}: {report.first_error}")
    on_step(f"wrote and checked the data of {len(folders)} sites ({', '.join(folders)}) and the server's test set")
    if not insecure:
        certs.create(out / "certs", ["127.0.0.1", "localhost"], list(folders))
        on_step(f"created the CA, the SuperLink certificate and site keys in {out / 'certs'}")
    # A stop signal (the command line's handler raises KeyboardInterrupt) leaves the `with`
    # block, which stops every process started.
    with LocalDeployment(out, list(folders), insecure) as deployment:
        deployment.start_superlink()
        security = "INSECURE: no TLS, any node may join" if insecure else "TLS, SuperNode authentication"
        on_step(f"SuperLink on 127.0.0.1:{deployment.port}: {security}")
        for site, folder in folders.items():
            if not insecure:
                deployment.register(site)
            deployment.start_supernode(site, folder)
        on_step(f"{'' if insecure else 'registered the site keys; '}{len(folders)} SuperNodes started")
        run_config = {
            "sites": len(folders),
            "rounds": rounds,
            "secagg": secagg,
            "test-dir": str(test_dir),
            "out": str(out / "run"),
        } | ({"round-timeout": RESTART_ROUND_SECONDS_PER_SITE * sites} if restart_site else {})
        run_id = deployment.submit(run_config, extra_run_config)
        on_step(f"run {run_id} submitted with `flwr run`")

        restarted = False

        def round_done(done: int) -> None:
            nonlocal restarted
            on_round(done)
            if restart_site and not restarted and 1 <= done < rounds:  # while rounds remain to rejoin
                restarted = True
                deployment.restart_site(restart_site, folders[restart_site])
                on_step(
                    f"{restart_site}: its machine killed after round {done}; started again with `fedicu site start`"
                )

        deployment.wait(run_id, out / "run", timeout, round_done)
        if restart_site and not restarted:
            raise DeploymentError(f"the run ended before {restart_site} could be restarted; give more --rounds")
    on_step(f"stopped all {len(deployment.processes)} processes started and their children")
    return out / "run"


def round_times(out: Path, run_dir: Path) -> dict:
    """The deployed run's time per round against the same work through Flower's Simulation
    Engine: the same site folders, split as each site splits its own (`load_site`), and the same
    configuration, in OUT/simulated. Its server scores the sites' own test splits pooled, as
    simulations do, instead of the separate server test set (of about the same size). Each the
    median over the rounds after the first (the first also holds start-up), or the one round."""
    from fedicu.server.federated_run import LogProgress
    from fedicu.simulations.simulate import simulate

    config = RunConfig.from_flower(json.loads((run_dir / CONFIG_FILE).read_text()))
    folders = sorted(p for p in (out / "sites").iterdir() if p.is_dir())
    hospitals = [
        load_site(site_source({"data-dir": str(f)}, config.task), f.name, config.test_fraction,
                  config.val_fraction, config.seed)
        for f in folders
    ]  # fmt: skip
    test = Sequences.concat([h.test for h in hospitals])
    twin = RunDirectory(out / "simulated").create()
    twin_config = replace(config, sites=0, test_dir="", out=str(twin.path))
    simulate(twin_config, Federation(hospitals, test, {}, config.task, ()), twin, LogProgress())

    def per_round(rows: list[dict]) -> float:
        return statistics.median(r["seconds"] for r in (rows[1:] or rows))

    deployed, simulated = (
        per_round(json.loads((run_dir / METRICS_JSON).read_text())),
        per_round(twin.read_json(METRICS_JSON)),
    )
    return {
        "deployed_round_s": deployed,
        "simulated_round_s": simulated,
        "deployed_over_simulated": deployed / simulated,
    }
