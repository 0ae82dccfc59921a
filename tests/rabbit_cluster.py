"""A RabbitMQ cluster of three nodes on this machine, of the servers under test, to kill and probe.

Each node runs the broker under test's own `rabbitmq-server` (this machine's, or the one in
$TASK_HISTORY_TEST_SERVER_ROOT's chroot, run there with `chroot`), on free ports, with its files
in a folder of the cluster's own: node names, cookie, epmd and data are all private, so nothing
here can reach this machine's broker (node rabbit@<host>, port 5672, epmd on 4369). The nodes
run as root from the broker's inner scripts (not Debian's wrapper, which switches to the
rabbitmq user and its home, and so to the host broker's cookie).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from tests.cluster import free_port
from tests.servers import TOOL_TIMEOUT, BrokerTools, scratch_folder, server_root

# The broker's own scripts, the same path in Debian bookworm's 3.10 and trixie's 4.0.
SCRIPTS = PurePosixPath("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 120  # seconds for a node to boot; 3.10 takes about 10 on two busy cores
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Node:
    """One node: its name, AMQP port and files; its process while it runs."""

    name: str
    port: int
    dist_port: int
    folder: Path
    seen_as: PurePosixPath  # the folder as the node sees it (inside the chroot, if any)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest, from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        """Where the node writes its Erlang VM's process id (our path)."""
        return self.folder / "pid"


class RabbitCluster:
    """Three RabbitMQ nodes clustered on private ports; kill, restart and ask them."""

    def __init__(self, *, size: int = 3) -> None:
        """Plan `size` nodes in a new scratch folder; `start()` starts them."""
        self.root = server_root()
        self.folder, self.seen_as = scratch_folder("th_rabbit_cluster_")
        self.folder.chmod(0o755)
        self.epmd_port = free_port()
        self.epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [
            Node(
                name=f"r{n}@localhost",
                port=free_port(),
                dist_port=free_port(),
                folder=self.folder / f"r{n}",
                seen_as=self.seen_as / f"r{n}",
            )
            for n in range(1, size + 1)
        ]
        home = self.folder / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16), encoding="ascii")
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.folder / "rabbitmq-env.conf").write_text("", encoding="utf-8")  # not Debian's
        (self.folder / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        (self.folder / "rabbitmq.conf").write_text("", encoding="utf-8")
        for node in self.nodes:
            node.folder.mkdir()

    # -- commands -----------------------------------------------------------------------------

    def _environment(self, node: Node | None = None) -> dict[str, str]:
        """The variables a node or rabbitmqctl needs: ours only, nothing from this process."""
        environment = {
            "PATH": SEARCH_PATH,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.seen_as / "home"),  # the cluster's cookie
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.seen_as / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.seen_as / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.seen_as / "rabbitmq.conf"),
        }
        if node is not None:
            environment |= {
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                # Distribution on loopback too, like AMQP: nothing listens beyond this machine.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "RABBITMQ_NODE_PORT": str(node.port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(node.seen_as / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.seen_as / "log"),
                "RABBITMQ_PID_FILE": str(node.seen_as / "pid"),
            }
        return environment

    def _command(self, program: str, *arguments: str) -> list[str]:
        """`program` of the servers under test: in their chroot when they run in one."""
        line = [program, *arguments]
        return ["chroot", str(self.root), *line] if self.root is not None else line

    def tools(self, node: Node) -> BrokerTools:
        """The rabbitmqctl of the servers under test, aimed at `node`."""
        command = self._command(str(SCRIPTS / "rabbitmqctl"), "-n", node.name)
        return BrokerTools(tuple(command), self._environment())

    def ctl(self, node: Node, *arguments: str, timeout: float = TOOL_TIMEOUT) -> str:
        """`rabbitmqctl -q -n NODE ARGUMENTS`; its output. A failure fails the test with it."""
        return self.tools(node).run(*arguments, timeout=timeout)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start epmd and every node, wait until each runs, then join them all to the first."""
        server = (self.root or Path("/")) / SCRIPTS.relative_to("/") / "rabbitmq-server"
        if not server.exists():
            pytest.fail(
                f"{server} is missing: a RabbitMQ cluster for the tests needs the broker's own"
                " scripts (Debian's rabbitmq-server package) beside the broker under test",
                pytrace=False,
            )
        # Our own epmd, in the foreground so that we hold its process; the nodes find it on
        # ERL_EPMD_PORT and start none of their own.
        self.epmd = subprocess.Popen(
            self._command("epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"),
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.ctl(node, "await_startup", "--timeout", str(START_TIMEOUT))

    def _launch(self, node: Node) -> None:
        """Start `node`'s rabbitmq-server in the background, its output in its folder."""
        node.pid_file.unlink(missing_ok=True)  # a killed node's stale id would fool `wait`
        with (node.folder / "server.out").open("ab") as output:
            node.process = subprocess.Popen(
                self._command(str(SCRIPTS / "rabbitmq-server")),
                env=self._environment(node),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the test's terminal is not for it
            )

    def _await(self, node: Node) -> None:
        """Wait until `node` has booted; fail with its own words if it does not."""
        try:
            self.ctl(
                node,
                "wait",
                str(node.seen_as / "pid"),
                "--timeout",
                str(START_TIMEOUT),
                timeout=START_TIMEOUT + 30,
            )
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            raise AssertionError(f"{node.name} did not start: {exc}\n{self.log(node)}") from None

    def log(self, node: Node) -> str:
        """The end of what `node` printed and logged, to explain a failure."""
        texts = [
            path.read_text(errors="replace")[-3000:]
            for path in [node.folder / "server.out", *sorted((node.folder / "log").glob("*.log"))]
            if path.exists()
        ]
        return "\n".join(texts)

    def vm_pid(self, node: Node) -> int | None:
        """The process id of `node`'s Erlang VM if it runs, checked to be this node's."""
        try:
            pid = int(node.pid_file.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        # Never a process that is not this node's, whatever the file says: ours alone were
        # started with this data folder.
        mine = f"RABBITMQ_MNESIA_BASE={node.seen_as / 'mnesia'}".encode()
        return pid if mine in environment else None

    def running(self, node: Node) -> bool:
        """Whether `node`'s VM runs."""
        return self.vm_pid(node) is not None

    def kill(self, node: Node) -> None:
        """Send SIGKILL to `node`'s Erlang VM: a crash, no goodbye to clients or peers."""
        pid = self.vm_pid(node)
        assert pid is not None, f"{node.name} is not running"
        os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=30)  # its start script ends with it
            node.process = None

    def restart(self, node: Node) -> None:
        """Start a killed `node` again and wait until it is back in the cluster."""
        self._launch(node)
        self._await(node)
        self.ctl(node, "await_startup", "--timeout", str(START_TIMEOUT))

    def heal(self) -> None:
        """Start again every node that is not running."""
        for node in self.nodes:
            if not self.running(node):
                self.restart(node)

    def stop(self) -> None:
        """Kill every node and the epmd, and remove the cluster's folder."""
        for node in self.nodes:
            with contextlib.suppress(OSError, AssertionError, subprocess.TimeoutExpired):
                if self.running(node):
                    self.kill(node)
            if node.process is not None:
                # The start script, the VM and its helpers share the session it was given.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=30)
                node.process = None
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- quorum queues ------------------------------------------------------------------------

    def node_named(self, name: str) -> Node:
        """The node called `name` (r1@localhost, ...)."""
        return next(node for node in self.nodes if node.name == name)

    def alive(self) -> Node:
        """A node that runs, to ask."""
        return next(node for node in self.nodes if self.running(node))

    def leader(self, queue: str) -> Node:
        """The node that leads quorum queue `queue` (in vhost /) right now."""
        listing = self.ctl(self.alive(), "list_queues", "name", "leader", "--no-table-headers")
        for line in listing.splitlines():
            name, _, leader = line.rpartition("\t")
            if name == queue:
                return self.node_named(leader.strip())
        raise AssertionError(f"no queue {queue} in:\n{listing}")

    def move_leader(self, queue: str, to: Node) -> None:
        """Make `to` the leader of quorum queue `queue` (in vhost /); wait until it is."""
        deadline = time.monotonic() + 30
        while (current := self.leader(queue)) is not to:
            # Ra transfers leadership from the current leader to a named member.
            self.ctl(
                current,
                "eval",
                '{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue,'
                f' <<"{queue}">>)), {{Name, Leader}} = amqqueue:get_pid(Q),'
                f" ra:transfer_leadership({{Name, Leader}}, {{Name, '{to.name}'}}).",
            )
            assert time.monotonic() < deadline, f"{queue}'s leader stays on {current.name}"
            time.sleep(0.5)

    def urls(self, *nodes: Node) -> str:
        """The nodes' URLs separated by commas, as TASK_HISTORY_AMQP_URL takes them."""
        return ",".join(node.url for node in nodes)


@contextlib.contextmanager
def rabbit_cluster(*, size: int = 3) -> Iterator[RabbitCluster]:
    """A started cluster of `size` nodes; killed and removed on the way out, even on failure."""
    cluster = RabbitCluster(size=size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class PrivateBroker:
    """One RabbitMQ node of the suite's own, to restart or reconfigure: its URL and rabbitmqctl."""

    url: str
    tools: BrokerTools


@contextlib.contextmanager
def private_broker() -> Iterator[PrivateBroker]:
    """A single node of the servers under test, on ports of its own; gone on the way out."""
    with rabbit_cluster(size=1) as cluster:
        node = cluster.nodes[0]
        yield PrivateBroker(node.url, cluster.tools(node))
