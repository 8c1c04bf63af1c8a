"""DPDK ``dpdk-testpmd`` driven over its interactive prompt (the peer DPDK users know).

One :class:`Testpmd` per process: ``--no-huge`` memory, two lcores pinned to one CPU, a unique
``--file-prefix``, one virtual device (``net_virtio_user`` as a vhost-user frontend, ``net_vhost``
as DPDK's own backend). Commands wait for the next ``testpmd>`` prompt under a deadline.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sim.child_process import ChildError, ChildProcess
from testbenches.peers.process import find_program

INSTALL_HINT = "apt-get install dpdk-dev (testpmd ships in dpdk-dev on Debian 12)"
PROMPT = re.compile(r"testpmd> ")
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0
_STAT = re.compile(r"([A-Za-z-]+):\s+(\d+)")
_prefixes = itertools.count()


def virtio_user_vdev(path: str, *, queues: int = 1, queue_size: int | None = None, server: bool = False,
                     mrg_rxbuf: bool | None = None, in_order: bool | None = None, mac: str | None = None,
                     index: int = 0, packed_vq: bool | None = None) -> str:
    """``net_virtio_user`` devargs (see DPDK's virtio_user documentation); ``packed_vq`` asks for packed rings."""
    args = [f"net_virtio_user{index}", f"path={path}", f"queues={queues}"]
    if queue_size is not None:
        args.append(f"queue_size={queue_size}")
    if server:
        args.append("server=1")
    if mrg_rxbuf is not None:
        args.append(f"mrg_rxbuf={int(mrg_rxbuf)}")
    if in_order is not None:
        args.append(f"in_order={int(in_order)}")
    if mac is not None:
        args.append(f"mac={mac}")
    if packed_vq is not None:
        args.append(f"packed_vq={int(packed_vq)}")
    return ",".join(args)


def vhost_vdev(path: str, *, queues: int = 1, client: bool = False, index: int = 0) -> str:
    """``net_vhost`` devargs: DPDK's own vhost-user backend, the reference peer."""
    args = [f"net_vhost{index}", f"iface={path}", f"queues={queues}"]
    if client:
        args.append("client=1")
    return ",".join(args)


def pcap_vdev(rx_pcap: Path, tx_pcap: Path, *, index: int = 0) -> str:
    """``net_pcap`` devargs: a port that receives the frames of ``rx_pcap`` once and writes what it sends to
    ``tx_pcap`` (a packet source and sink the test controls)."""
    return f"net_pcap{index},rx_pcap={rx_pcap},tx_pcap={tx_pcap}"


def forward_errors(stop_output: str) -> dict[str, int]:
    """The checksum error counters of ``stop``'s forward statistics (csum engine), summed over the ports."""
    totals: dict[str, int] = {}
    for name, value in re.findall(r"(Bad-(?:outer-)?(?:ipcsum|l4csum)):\s+(\d+)", stop_output):
        totals[name] = totals.get(name, 0) + int(value)
    return totals


@dataclass(frozen=True)
class PortStats:
    """``show port stats`` counters of one port."""

    rx_packets: int
    rx_bytes: int
    rx_errors: int
    rx_missed: int
    rx_nombuf: int
    tx_packets: int
    tx_bytes: int
    tx_errors: int

    @classmethod
    def parse(cls, text: str) -> PortStats:
        values: Mapping[str, int] = {k: int(v) for k, v in _STAT.findall(text)}
        try:
            return cls(values["RX-packets"], values["RX-bytes"], values["RX-errors"], values["RX-missed"],
                       values["RX-nombuf"], values["TX-packets"], values["TX-bytes"], values["TX-errors"])
        except KeyError as exc:
            raise ChildError(f"testpmd port stats without {exc}: {text!r}") from None


class Testpmd:
    """An interactive testpmd with one vdev; ``cpu`` pins both lcores to one CPU."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, vdev: str, *, log: Path, cpu: int = 0, mem_mb: int = 256, mbufs: int = 32768,
                 extra_eal: tuple[str, ...] = (), extra_app: tuple[str, ...] = (), name: str = "testpmd") -> None:
        program = find_program("dpdk-testpmd", INSTALL_HINT)
        # testpmd's printf output is block-buffered on a pipe while its prompt is not: line buffering
        # keeps a command's output before the next prompt.
        stdbuf = find_program("stdbuf", "apt-get install coreutils")
        cpu = cpu % (os.cpu_count() or 1)
        self.prefix = f"vdpa-bench-{os.getpid()}-{next(_prefixes)}"
        argv = [stdbuf, "-oL", program, "--lcores", f"0@{cpu},1@{cpu}", "--no-pci", f"--file-prefix={self.prefix}",
                "--no-huge", "-m", str(mem_mb), "--vdev", vdev, *extra_eal, "--", "-i", "--nb-cores=1",
                f"--total-num-mbufs={mbufs}", *extra_app]
        self.proc = ChildProcess(argv, log=log, interactive=True, name=name)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self.proc.wait_for(PROMPT, timeout)

    def command(self, line: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Send one command; its output up to the next prompt."""
        since = self.proc.mark()
        self.proc.send(line + "\n")
        found = self.proc.wait_for(PROMPT, timeout, since=since)
        return self.proc.output()[since:][:found.start()] if found else ""

    def port_stats(self, port: int = 0) -> PortStats:
        return PortStats.parse(self.command(f"show port stats {port}"))

    def link_up(self, port: int = 0) -> bool:
        return bool(re.search(r"Link status:\s+up", self.command(f"show port info {port}")))

    def quit(self, timeout: float = COMMAND_TIMEOUT) -> int:
        """``quit`` and wait for the exit; stopped by PID if it does not exit in time."""
        if self.proc.proc.poll() is None:
            try:
                self.proc.send("quit\n")
                return self.proc.wait_exit(timeout)
            except (ChildError, OSError):
                pass
        return self.proc.stop()

    def stop(self) -> int:
        return self.proc.stop()

    def __enter__(self) -> Testpmd:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.proc.stop()
