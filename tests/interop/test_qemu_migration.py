"""A QEMU 7.2 guest live-migrated from one ``serve`` to another while its traffic runs (issue 14, must-show 2),
and the same guest migrated with QEMU's built-in virtio-net backend in the same run, for the downtime QEMU reports.

Three devices behind ``serve``, each with a ring-state register, so a running ring's state can be read and set:
the behavioral model with that block alone (the backend's used-ring relay logs its writes), the model mirroring
the RTL's vendor blocks and the RTL itself (the device logs its own writes into a bytemap the backend folds into
QEMU's log). Each side has its own ``serve`` and its own QEMU; the destination QEMU waits with ``-incoming``. A
recording relay between each QEMU and its serve keeps the vhost-user messages: the source's GET_VRING_BASE answers
must come back as the destination's SET_VRING_BASE.

The guest's wire is the device's loopback: ``ping -A`` from one of eth0's addresses to the other (as in
``test_qemu_vhost_user``) sends numbered echoes (ICMP seq) one at a time, each crossing the device twice. The guest
counts the replies by seq (duplicates, gaps), its kernel checks every checksum; both serves capture their wire and
the two captures together must hold every echo at most once, with the payload the guest wrote. The built-in
backend's loop is a UDP socket that sends to itself (``-netdev socket,udp=...,localaddr=`` the same address): every
frame the guest sends comes back, as on the model's loopback.

When the migration has completed, both QEMUs stopped (the destination waits with ``-S``), the guest RAM of the two
is compared page by page: a page written during the migration that no dirty log reported would differ (measured
with the backend's dirty log switched off: a few stale pages in about one run of five, since the guest's vCPU
writes most pages the device wrote again before the last copy; the logging property itself is checked elsewhere).

The test fails on a failed migration, RAM differing after it, a dead network after it, a corrupted or duplicated
frame, or more loss than the echoes in flight. The two downtimes and their ratio are printed and recorded (goal:
within 1.5x), not judged.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from backend.vhost_user.messages import FrontendRequest, Status
from models.virtio_net.dirty_log_block import SPEC as SIM_DEVICE_LOG
from models.virtio_net.vq_state_block import SPEC as SIM_VQ_STATE
from testbenches.guest.kernel import Kernel
from testbenches.guest.migration import MigrationGuest, MigrationStats, differing_pages, guest_ram, migrate, resume
from testbenches.guest.qemu import vhost_user_net_args
from testbenches.peers.serve import ServeProcess
from testbenches.peers.vhost_user_recorder import VhostUserRecorder
from tests.interop.test_qemu_vhost_user import NET_UP
from tests.rtl_build import require_rtl_build

MAC = "52:54:00:0b:e7:03"
MEMORY_MB = 128
#: ICMP payload bytes of the flow: a 98-byte frame, which the guest's virtio_net copies out of its receive buffer
#: (at most GOOD_COPY_LEN, 128 bytes with the virtio-net header) instead of building the skb in it, so the vCPU does
#: not write those pages after the device: a page the device wrote late in the migration without logging it stays
#: stale on the destination (the RAM comparison after the migration sees it; it does not happen in every run).
SIZE = 56
WARM_SIZE = 32
PATTERN = 0xA5
#: The guest prints a progress line every this many echo replies of the flow.
EVERY = 100
#: Echoes after the migration (a fresh ping, each must come back), of their own size.
AFTER = 50
AFTER_SIZE = 120
READY_TIMEOUT = 30.0
BOOT_TIMEOUT = 90.0
MIGRATE_TIMEOUT = 60.0
#: ping -A has one echo in flight at a time: one may be lost where the guest stopped, one where the flow was ended.
MAX_LOSS = 2
GOAL_RATIO = 1.5

#: The guest's job: eth0 up with two addresses (locally generated packets routed out of eth0), then an echo flow
#: that runs until the host types a line on the serial console, then a fresh count of echoes. Every result is a
#: ``vdpa-mig: key=value`` console line.
JOB = r"""
set -u
net=/sys/class/net/eth0
say() { echo "vdpa-mig: $1=$2"; }
[ -d $net ] || { echo "no eth0"; ls /sys/class/net; exit 10; }
""" + NET_UP + r"""
ping -A -q -c 3 -s @WARM_SIZE@ -W 5 -w 20 -I 10.0.0.1 10.0.0.2 > /tmp/warm.txt || { cat /tmp/warm.txt; exit 15; }
say icmp_before "$(grep '^Icmp:' /proc/net/snmp | tr '\n' ';')"
mkfifo /tmp/flow
# awk counts the replies by seq. ping writes them through stdio into the fifo, and a SIGINT in the middle of a flush
# writes the last line again (same seq, same time=): one reply, not two (ping marks a second reply DUP!).
awk -v every=@EVERY@ '
/bytes from/ {
    if ($0 == prev) { rewritten++; next }
    prev = $0
    match($0, /seq=[0-9]+/)
    s = substr($0, RSTART + 4, RLENGTH - 4) + 0
    if ($0 ~ /DUP!/) { dups++; next }
    if (n > 0 && s > last + 1) { gaps += s - last - 1; print "vdpa-mig-odd: after seq " last ": " $0; fflush() }
    if (n > 0 && s <= last) { reordered++; print "vdpa-mig-odd: after seq " last ": " $0; fflush() }
    if (s > last || n == 0) last = s
    n++
    if (n % every == 0) { print "vdpa-mig: replies " n; fflush() }
    next
}
/packets transmitted/ { print "vdpa-mig: flow_stats=" $0; fflush() }
END {
    printf "vdpa-mig: flow_seen=%d dups=%d gaps=%d reordered=%d rewritten=%d last=%d\n", n, dups, gaps, reordered,
        rewritten, last
    fflush()
}' < /tmp/flow &
awk_pid=$!
ping -A -s @SIZE@ -p @PATTERN@ -I 10.0.0.1 10.0.0.2 > /tmp/flow 2>&1 &
ping_pid=$!
echo "vdpa-mig: flow running"
read -r word < /dev/ttyS0
kill -INT $ping_pid
wait $ping_pid
wait $awk_pid
ping -A -q -c @AFTER@ -s @AFTER_SIZE@ -p @PATTERN@ -W 5 -w 30 -I 10.0.0.1 10.0.0.2 > /tmp/after.txt
say after_code $?
say after "$(grep 'packets transmitted' /tmp/after.txt)"
say icmp_after "$(grep '^Icmp:' /proc/net/snmp | tr '\n' ';')"
exit 0
""".replace("@EVERY@", str(EVERY)).replace("@SIZE@", str(SIZE)).replace("@PATTERN@", f"{PATTERN:02x}") \
   .replace("@AFTER@", str(AFTER)).replace("@AFTER_SIZE@", str(AFTER_SIZE)) \
   .replace("@WARM_SIZE@", str(WARM_SIZE))

_RESULT = re.compile(r"vdpa-mig: (\w+)=([^\r\n]*)\r?\n")
_EXIT = re.compile(r"vdpa-guest: boot 1 job exit (\d+)\r?\n")
_PROGRESS = re.compile(r"vdpa-mig: replies (\d+)\r?\n")


@dataclass(frozen=True)
class Run:
    """One migration of the guest: what QEMU reported and what the guest counted."""

    backend: str
    stats: MigrationStats
    results: dict[str, str]


def icmp_counters(line: str) -> dict[str, int]:
    """``Icmp: InMsgs ...;Icmp: 10 ...;`` from /proc/net/snmp into names and values."""
    names, values = (row.split()[1:] for row in line.strip(";").split(";"))
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def check_guest(run: Run) -> None:
    """The guest's count: the flow crossed the migration with no duplicate, no corruption, at most the echoes in
    flight lost, and every echo of the fresh ping after it came back."""
    r, where = run.results, f"{run.backend}:"
    assert r["driver"] == "virtio_net" and r["operstate"] == "up", f"{where} eth0 {r}"
    stats = re.search(r"(\d+) packets transmitted, (\d+) packets received(?:, (\d+) duplicates)?", r["flow_stats"])
    assert stats is not None, f"{where} no ping statistics: {r['flow_stats']}"
    sent, received, duplicates = int(stats[1]), int(stats[2]), int(stats[3] or 0)
    seen = dict(kv.split("=") for kv in f"flow_seen={r['flow_seen']}".split())
    assert duplicates == 0 and seen["dups"] == "0", f"{where} duplicate echo replies: {r['flow_stats']}; {seen}"
    # (not judged: a reply may come after a later one when ping's 1 s timer sent the next echo during the downtime;
    # such lines are on the console as vdpa-mig-odd)
    assert int(seen["flow_seen"]) == received, f"{where} the guest counted {seen} of {r['flow_stats']}"
    assert sent - received <= MAX_LOSS and int(seen["gaps"]) <= MAX_LOSS, \
        f"{where} {sent - received} echoes lost across the migration (at most {MAX_LOSS} in flight): {seen}"
    assert r["after_code"] == "0" and f"{AFTER} packets transmitted, {AFTER} packets received" in r["after"], \
        f"{where} network dead after the migration: {r['after']}"
    before, after = icmp_counters(r["icmp_before"]), icmp_counters(r["icmp_after"])
    delta = {k: after[k] - before[k] for k in after}
    assert delta["InErrors"] == delta["InCsumErrors"] == 0, f"{where} ICMP errors (corrupted frames): {delta}"
    # every echo request the guest took in was answered and its reply taken in: no frame delivered twice
    assert delta["InEchos"] == delta["OutEchoReps"] and delta["InEchoReps"] <= delta["InEchos"], \
        f"{where} ICMP counters across the migration: {delta}"


def check_wires(pcaps: list[Path]) -> tuple[int, int]:
    """Both serves' wires together: every echo of the flow crossed once, with the guest's payload. The number of
    echo requests on the source's wire and on the destination's."""
    seen: dict[tuple[int, int, int], int] = {}
    requests = []
    for path in pcaps:
        count = 0
        for p in rdpcap(str(path)):
            f = Ether(bytes(p))
            if ICMP not in f or len(f[ICMP].payload) != SIZE:
                continue
            payload = bytes(f[ICMP].payload)
            assert payload[8:] == bytes([PATTERN]) * (SIZE - 8), f"{path.name}: {f.summary()}: payload altered"
            key = (int(f[ICMP].id), int(f[ICMP].type), int(f[ICMP].seq))
            seen[key] = seen.get(key, 0) + 1
            count += key[1] == 8
        requests.append(count)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"echo frames on the wires more than once (id, type, seq): {sorted(twice.items())[:20]}"
    return requests[0], requests[1]


def source_stop_ms(recorder: VhostUserRecorder) -> float:
    """How long the source's backend took to stop the device, as the relay saw it: from QEMU's SET_STATUS 0 (the
    first message of its stop) to the last GET_VRING_BASE answer."""
    messages = recorder.messages()
    answers = [r.at for r in messages if r.request is FrontendRequest.GET_VRING_BASE and r.direction == "B->F"]
    assert answers, "the source never answered GET_VRING_BASE"
    resets = [r.at for r in messages if r.request is FrontendRequest.SET_STATUS and r.direction == "F->B"
              and isinstance(r.payload, Status) and r.payload.value == 0 and r.at <= answers[0]]
    assert resets, "QEMU's stop sequence did not begin with SET_STATUS 0"
    return (answers[-1] - resets[-1]) * 1000


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 free now (the built-in NIC's socket binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def builtin_loop_args(port: int) -> list[str]:
    """QEMU's own virtio-net on a UDP socket that sends to itself: the same device options as the vhost-user NIC."""
    return ["-netdev", f"socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{port}",
            "-device", f"virtio-net-pci,netdev=n0,vectors=0,romfile=,mac={MAC}"]


def migrate_under_traffic(started: contextlib.ExitStack, kernel: Kernel, workdir: Path, sock_dir: Path,
                          backend: str, net_args: tuple[list[str], list[str]]) -> Run:
    """Boot the guest on the source, start its flow, migrate it, let the flow run on the destination, end it; the
    migration's figures and the guest's results."""
    source = started.enter_context(MigrationGuest(workdir, sock_dir / f"{backend}-src.qmp", kernel=kernel, job=JOB,
                                                  net_args=net_args[0], memory_mb=MEMORY_MB, name=f"{backend}-src"))
    destination = started.enter_context(MigrationGuest(workdir, sock_dir / f"{backend}-dst.qmp", kernel=kernel,
                                                       job=JOB, net_args=net_args[1], memory_mb=MEMORY_MB,
                                                       name=f"{backend}-dst", incoming=True))
    src, dst = source.process, destination.process
    found = src.wait_for(r"vdpa-mig: flow running\r?\n|" + _EXIT.pattern, BOOT_TIMEOUT)
    assert found.group(0).startswith("vdpa-mig"), f"{backend}: the job ended before its flow:\n{src.tail(60)}"
    src.wait_for(_PROGRESS, BOOT_TIMEOUT, since=found.end())  # the flow runs before the migration
    stats = migrate(source, destination, f"unix:{sock_dir / f'{backend}-mig.sock'}", MIGRATE_TIMEOUT)
    # Both guests stopped: the destination's RAM is the source's, page for page, unless a page written during the
    # migration (by the device through the backend, by the vCPU or by QEMU) never reached a dirty log.
    stale = differing_pages(guest_ram(source), guest_ram(destination), MEMORY_MB << 20)
    assert not stale, (f"{backend}: {len(stale)} guest page(s) differ between source and destination after the "
                       f"migration (written, not logged): {[hex(p) for p in stale[:16]]}")
    resume(destination)
    # The flow goes on on the destination: two progress lines there (the destination's console starts empty).
    first = dst.wait_for(_PROGRESS, READY_TIMEOUT)
    dst.wait_for(_PROGRESS, READY_TIMEOUT, since=first.end())
    mark = dst.mark()
    destination.send("stop\n")
    code = dst.wait_for(_EXIT, READY_TIMEOUT + BOOT_TIMEOUT, since=mark)
    console = src.output() + dst.output()
    assert code[1] == "0", f"{backend}: guest job exit {code[1]}:\n{dst.tail(60)}"
    assert source.quit() == 0, f"{backend}: source QEMU exit status"
    assert dst.wait_exit(READY_TIMEOUT) == 0, f"{backend}: destination QEMU exit status"
    return Run(backend, stats, {m[1]: m[2] for m in _RESULT.finditer(console)})


#: Each side's serve: the model with the ring-state block alone (the backend relays its used rings to log), the
#: model mirroring the RTL's vendor blocks (the device logs its own writes) and the RTL itself.
BACKENDS = [pytest.param(SIM_VQ_STATE, "relay", id="model-relay"),
            pytest.param(SIM_DEVICE_LOG, "device", id="model-device-log"),
            pytest.param("rtl:virtio-net", "device", id="rtl-device-log")]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("device", "logged_by"), BACKENDS)
def test_qemu_guest_migrates_between_serves_under_traffic(kernel: Kernel, tmp_path: Path, sock_dir: Path,
                                                          started: contextlib.ExitStack, device: str, logged_by: str,
                                                          record_property: Callable[[str, object], None]) -> None:
    if device.startswith("rtl:"):
        require_rtl_build(device)
    serves, recorders, pcaps = [], [], []
    for side in ("src", "dst"):
        sock, pcap = sock_dir / f"{side}.sock", tmp_path / f"{side}-wire.pcap"
        serve = started.enter_context(ServeProcess(str(sock), f"{device},wire=loopback,pcap={pcap}",
                                                   log=tmp_path / f"serve-{side}.log"))
        assert serve.wait_listening(READY_TIMEOUT) == f"listening on {sock}"
        recorders.append(started.enter_context(VhostUserRecorder(sock_dir / f"{side}-qemu.sock", sock)))
        serves.append(serve)
        pcaps.append(pcap)
    vhost = migrate_under_traffic(started, kernel, tmp_path / "vhost-user", sock_dir, "vhost-user",
                                  (vhost_user_net_args(recorders[0].listen_path, mac=MAC),
                                   vhost_user_net_args(recorders[1].listen_path, mac=MAC)))
    builtin = migrate_under_traffic(started, kernel, tmp_path / "builtin", sock_dir, "builtin",
                                    (builtin_loop_args(free_udp_port()), builtin_loop_args(free_udp_port())))

    ratio = vhost.stats.downtime_ms / max(builtin.stats.downtime_ms, 1)
    print(f"\nmigration downtime (QEMU query-migrate): vhost-user on serve {vhost.stats.downtime_ms} ms, "
          f"built-in virtio-net {builtin.stats.downtime_ms} ms, ratio {ratio:.2f} (goal <= {GOAL_RATIO}); "
          f"total time {vhost.stats.total_time_ms} ms / {builtin.stats.total_time_ms} ms")
    for run in (vhost, builtin):
        print(f"{run.backend}: {run.results['flow_stats']}; {run.results['flow_seen']}")
        record_property(f"{run.backend}_downtime_ms", run.stats.downtime_ms)
        record_property(f"{run.backend}_total_time_ms", run.stats.total_time_ms)
    record_property("downtime_ratio", round(ratio, 2))

    check_guest(vhost)
    check_guest(builtin)
    for recorder in recorders:
        recorder.close()
        assert not recorder.errors, recorder.errors
    # The ring state went across: the source stopped each ring once (GET_VRING_BASE), where it had moved to, and
    # the destination resumed it there (its one SET_VRING_BASE), ran it on and stopped it further on at power-off.
    given = recorders[0].ring_bases(FrontendRequest.GET_VRING_BASE, "B->F")
    taken = recorders[1].ring_bases(FrontendRequest.SET_VRING_BASE, "F->B")
    ended = recorders[1].ring_bases(FrontendRequest.GET_VRING_BASE, "B->F")
    stop_ms = source_stop_ms(recorders[0])
    record_property("vhost_user_source_stop_ms", round(stop_ms, 1))
    print(f"serve's part of the source's stop (SET_STATUS 0 to the last GET_VRING_BASE answer): {stop_ms:.1f} ms")
    print(f"ring bases: source GET_VRING_BASE {given}, destination SET_VRING_BASE {taken}, destination "
          f"GET_VRING_BASE at power-off {ended}")
    assert set(given) == {0, 1} and given == taken and all(len(b) == 1 for b in given.values()), \
        f"source GET_VRING_BASE {given}, destination SET_VRING_BASE {taken}"
    assert all(b[0] > 0 for b in given.values()), f"the rings had not moved when the source stopped them: {given}"
    assert set(ended) == {0, 1} and all(ended[q][0] > given[q][0] for q in given), \
        f"the destination's rings did not move on from {given}: stopped at {ended}"
    on_source, on_destination = check_wires(pcaps)
    assert on_source > 0 and on_destination > 0, \
        f"echo requests on the source's wire {on_source}, on the destination's {on_destination}"
    for side, serve in zip(("source", "destination"), serves, strict=True):
        serve.proc.wait_for(r"vhost-user#1: frontend disconnected", READY_TIMEOUT)
        assert serve.stop() == 0, f"{side} serve exit status:\n{serve.proc.tail()}"
        log = serve.log()
        for bad in ("refused", "session dropped", "WARNING", "ERROR", "Traceback"):
            assert bad not in log, f"{bad!r} in the {side} serve's log:\n{log[-3000:]}"
    source_log = serves[0].log()
    assert "dirty logging on" in source_log, f"the source never logged dirty pages:\n{source_log[-3000:]}"
    by_device = "dirty logging on, by the device itself" in source_log
    assert by_device == (logged_by == "device"), \
        f"dirty pages logged by the {'device' if by_device else 'relay'}, not the {logged_by}:\n{source_log[-3000:]}"
