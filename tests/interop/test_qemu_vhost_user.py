"""QEMU 7.2 as the vhost-user frontend of ``vdpa-bench serve``: a Linux guest's virtio_net driver
runs on our backend's device, traffic loops back intact, and a guest reboot (QEMU resets the device:
SET_STATUS 0, then the driver initialises it again) leaves a working device in the same session.

The device's wire is the loopback: every frame the guest transmits comes back on its RX queue. The
guest gives eth0 two addresses and routes locally generated packets out of eth0 (policy routing,
``accept_local``), so ``ping`` from one address to the other crosses the device twice per echo
(request and reply) and the guest kernel checks every returned frame (IP and ICMP checksums). The
backend captures its wire into a pcap, read here: the echo payloads crossed it with the pattern the
guest wrote.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from testbenches.guest.initramfs import MARKER_PREFIX
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, vhost_user_net_args
from testbenches.peers.serve import ServeProcess
from tests.soak import fd_count, rss_kib

MAC = "52:54:00:0b:e7:01"
#: ICMP payload sizes: small, medium and a full 1500-byte IP packet.
SIZES = (56, 512, 1472)
PINGS = 8  # per size and boot
PATTERN = 0xA5
READY_TIMEOUT = 30.0
BOOT_TIMEOUT = 90.0
EXIT_TIMEOUT = 30.0

#: eth0 (``$net``, known to exist) up with two addresses, locally generated packets routed out of it; what it finds
#: is recorded with the job's ``say KEY VALUE``. The guest jobs of the QEMU tests start with it.
NET_UP = r"""
say driver "$(basename "$(readlink $net/device/driver)")"
# Only the frames sent here may cross the device: no IPv6 autoconfiguration traffic.
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
ip link set eth0 up || exit 11
# operstate follows the carrier through the kernel's linkwatch work; busybox has nothing to block
# on, so poll it with a deadline (10 s).
i=0
while [ "$(cat $net/operstate)" != up ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
say operstate "$(cat $net/operstate)"
say carrier "$(cat $net/carrier)"
# Two local addresses on eth0; packets generated here (iif lo) are routed out of eth0 by table 100,
# packets arriving on eth0 are delivered locally (table local, moved after rule 10).
ip addr add 10.0.0.1/24 dev eth0 && ip addr add 10.0.0.2/24 dev eth0 || exit 12
echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter
echo 0 > /proc/sys/net/ipv4/conf/eth0/rp_filter
echo 1 > /proc/sys/net/ipv4/conf/eth0/accept_local
ip rule add pref 10 iif lo lookup 100 && ip rule add pref 100 lookup local && ip rule del pref 0 || exit 13
ip route add 10.0.0.0/24 dev eth0 table 100 || exit 14
""".lstrip("\n")

#: The start of every guest job here: results in /job/result-N.env, then eth0 up (:data:`NET_UP`).
SETUP = r"""
set -u
boot=$VDPA_GUEST_BOOT
out=/job/result-$boot.env
net=/sys/class/net/eth0
: > "$out"
say() { echo "$1=$2" >> "$out"; }
[ -d $net ] || { echo "no eth0"; ls /sys/class/net; exit 10; }
say mac "$(cat $net/address)"
""" + NET_UP

#: Runs in the guest at each boot; leaves ``/job/result-N.env`` (``key=value``) for the host. Boots 1..@REBOOTS@
#: reboot the guest at their end. With @HOLD@ 1 the job waits, with the device running and its traffic done, for the
#: host to sample serve and write ``/job/go-N``.
_JOB = SETUP + r"""
snap() {
    say "$1_rx" "$(cat $net/statistics/rx_packets)"
    say "$1_tx" "$(cat $net/statistics/tx_packets)"
    say "$1_rx_bytes" "$(cat $net/statistics/rx_bytes)"
    say "$1_tx_bytes" "$(cat $net/statistics/tx_bytes)"
    say "$1_lo_rx" "$(cat /sys/class/net/lo/statistics/rx_packets)"
    say "$1_icmp" "$(grep '^Icmp:' /proc/net/snmp | tr '\n' ';')"
}
snap before
for size in @SIZES@; do
    ping -A -q -c @PINGS@ -s "$size" -p @PATTERN@ -W 5 -w 20 -I 10.0.0.1 10.0.0.2 > /tmp/ping.txt
    say "ping_${size}_code" $?
    say "ping_${size}" "$(grep 'packets transmitted' /tmp/ping.txt)"
done
snap after
if [ @HOLD@ = 1 ]; then
    echo "vdpa-hold: boot $boot"
    # the host's answer comes through the 9p job directory: poll it with a deadline (60 s)
    i=0
    while [ ! -e /job/go-$boot ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
    [ -e /job/go-$boot ] || exit 15
fi
[ "$boot" -le @REBOOTS@ ] && touch /job/reboot-request
exit 0
""".replace("@SIZES@", " ".join(map(str, SIZES))).replace("@PINGS@", str(PINGS)).replace("@PATTERN@", f"{PATTERN:02x}")


def guest_job(reboots: int, *, hold: bool = False) -> str:
    """The job for ``reboots + 1`` boots; with ``hold`` each boot waits for the host's ``/job/go-N`` at its end."""
    return _JOB.replace("@REBOOTS@", str(reboots)).replace("@HOLD@", str(int(hold)))


JOB = guest_job(1)


def read_env(path: Path) -> dict[str, str]:
    assert path.exists(), f"the guest job left no {path.name}"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def icmp_counters(line: str) -> dict[str, int]:
    """``Icmp: InMsgs ...;Icmp: 10 ...;`` from /proc/net/snmp into names and values."""
    names, values = (row.split()[1:] for row in line.strip(";").split(";"))
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def check_boot(env: dict[str, str], boot: int) -> None:
    """One boot's traffic: link up, every frame back, every echo answered with intact checksums."""
    where = f"boot {boot}"
    assert env["mac"] == MAC, f"{where}: eth0 has MAC {env['mac']}, QEMU was given {MAC}"
    assert env["driver"] == "virtio_net", f"{where}: eth0 is driven by {env['driver']}"
    assert env["operstate"] == "up" and env["carrier"] == "1", \
        f"{where}: link not up (operstate {env['operstate']}, carrier {env['carrier']})"
    total = PINGS * len(SIZES)
    for size in SIZES:
        assert env[f"ping_{size}_code"] == "0", f"{where}: ping -s {size}: {env[f'ping_{size}']}"
        assert f"{PINGS} packets transmitted, {PINGS} packets received" in env[f"ping_{size}"], \
            f"{where}: ping -s {size}: {env[f'ping_{size}']}"
    rx = int(env["after_rx"]) - int(env["before_rx"])
    tx = int(env["after_tx"]) - int(env["before_tx"])
    # Request and reply each cross the device once (ARP for the two addresses comes on top).
    assert tx >= 2 * total, f"{where}: eth0 sent {tx} frames for {total} echoes"
    assert rx == tx, f"{where}: eth0 sent {tx} frames, {rx} came back over the loopback wire"
    rx_bytes = int(env["after_rx_bytes"]) - int(env["before_rx_bytes"])
    tx_bytes = int(env["after_tx_bytes"]) - int(env["before_tx_bytes"])
    assert rx_bytes == tx_bytes, f"{where}: eth0 sent {tx_bytes} bytes, received {rx_bytes} (used.len wrong?)"
    assert int(env["after_lo_rx"]) == int(env["before_lo_rx"]), f"{where}: traffic went over lo, not eth0"
    before, after = icmp_counters(env["before_icmp"]), icmp_counters(env["after_icmp"])
    delta = {k: after[k] - before[k] for k in after}
    assert (delta["InEchos"], delta["InEchoReps"]) == (total, total), \
        f"{where}: {total} echoes sent, kernel took in {delta['InEchos']} requests, {delta['InEchoReps']} replies"
    assert delta["InErrors"] == delta["InCsumErrors"] == 0, f"{where}: ICMP errors {delta}"


def check_pcap(path: Path, boots: int) -> None:
    """The wire carried every echo with the payload the guest wrote (timestamp, then the pattern)."""
    frames = [Ether(bytes(p)) for p in rdpcap(str(path))]
    seen: dict[tuple[int, int], int] = {}
    for f in frames:
        if ICMP not in f or f[IP].src not in ("10.0.0.1", "10.0.0.2"):
            continue
        assert f.src == MAC and f.dst == MAC, f"echo frame {f.summary()} between {f.src} and {f.dst}"
        payload = bytes(f[ICMP].payload)
        # busybox ping puts a timestamp in the first 8 bytes, the pattern in the rest
        assert payload[8:] == bytes([PATTERN]) * (len(payload) - 8), f"{f.summary()}: payload altered"
        key = (int(f[ICMP].type), len(payload))
        seen[key] = seen.get(key, 0) + 1
    want = {(t, size): PINGS * boots for t in (8, 0) for size in SIZES}
    assert seen == want, f"echo frames on the wire (type, size): {seen}, expected {want}"


def test_qemu_guest_virtio_net_on_serve_survives_reboot(kernel: Kernel, tmp_path: Path,
                                                        started: contextlib.ExitStack,
                                                        record_property: Callable[[str, object], None]) -> None:
    sock = tmp_path / "vu.sock"
    pcap = tmp_path / "wire.pcap"
    serve = started.enter_context(ServeProcess(str(sock), f"sim:virtio-net,wire=loopback,pcap={pcap}",
                                               log=tmp_path / "serve.log"))
    assert serve.wait_listening(READY_TIMEOUT) == f"listening on {sock}"

    guest = Guest(tmp_path / "guest", kernel=kernel, shared_memory=True, allow_reboot=True,
                  extra_args=vhost_user_net_args(sock, mac=MAC))
    started.enter_context(guest)
    guest.boot(JOB)

    record_property("boot_to_job_s", round(guest.wait_job_start(BOOT_TIMEOUT, boot=1), 2))
    first = guest.wait_job(BOOT_TIMEOUT, boot=1)
    assert first.exit_code == 0, f"boot 1 job exit {first.exit_code}:\n{guest.console()[-3000:]}"
    check_boot(read_env(guest.job_dir / "result-1.env"), 1)
    second = guest.wait_job(BOOT_TIMEOUT, boot=2)
    assert second.exit_code == 0, f"boot 2 job exit {second.exit_code}:\n{guest.console()[-3000:]}"
    check_boot(read_env(guest.job_dir / "result-2.env"), 2)
    record_property("two_boots_s", round(second.elapsed, 2))
    assert guest.wait_exit(EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{guest.console()[-3000:]}"

    # QEMU closed the connection when it exited; the backend saw one session through both boots.
    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", EXIT_TIMEOUT)
    assert serve.stop() == 0, f"serve exit status; log:\n{serve.proc.tail()}"
    log = serve.log()
    events = [(m.start(), m.group(1)) for m in re.finditer(
        r"vhost-user#1: (frontend connected|DRIVER_OK|device reset|frontend disconnected)", log)]
    # Consecutive resets count once: QEMU may reset a stopped device again.
    names = [name for i, (_, name) in enumerate(events) if i == 0 or events[i - 1][1] != name]
    # Boot 1 runs the device, the reboot resets it (SET_STATUS 0), boot 2 runs it again, power-off
    # resets it and closes the connection.
    assert names == ["frontend connected", "DRIVER_OK", "device reset", "DRIVER_OK", "device reset",
                     "frontend disconnected"], f"session events {names}; log:\n{log}"
    assert "vhost-user#2" not in log, f"QEMU opened a second session; log:\n{log}"
    for bad in ("refused", "session dropped", "WARNING", "ERROR", "Traceback"):
        assert bad not in log, f"{bad!r} in the backend log:\n{log}"
    check_pcap(pcap, boots=2)


#: Guest boots on one serve session (a reboot between each two), each with its traffic checked: 5 in make test;
#: ``VDPA_BENCH_GUEST_BOOTS=20`` for the long run (20 boots took 297 s under TCG on the shared 2-core machine).
BOOTS = 5
BOOTS_ENV = "VDPA_BENCH_GUEST_BOOTS"
#: serve's RSS may grow this much from boot 2 (allocator pools warm) to the last boot; a leak of a ring's worth of
#: buffers per reboot would pass it within a few boots.
RSS_SLACK_KIB = 2048


def hold_point(guest: Guest, boot: int, since: int) -> int:
    """Wait until boot ``boot``'s job holds (device running, traffic done); the console offset after it. A job
    that exits before it fails here, with its exit code."""
    found = guest.wait_for(rf"vdpa-hold: boot {boot}\r?\n|{MARKER_PREFIX} boot {boot} job exit (\d+)\r?\n",
                           BOOT_TIMEOUT, since=since)
    assert found[1] is None, f"boot {boot} job exit {found[1]} before its hold point:\n{guest.console()[-3000:]}"
    return since + found.end()


@pytest.mark.timeout(1200)
def test_qemu_guest_reboots_on_one_serve(kernel: Kernel, tmp_path: Path, started: contextlib.ExitStack,
                                         record_property: Callable[[str, object], None]) -> None:
    """:data:`BOOTS` boots (or ``$VDPA_BENCH_GUEST_BOOTS``) of one QEMU guest on one serve session: every boot's
    network works (the same checks as above), and serve's fds and RSS, sampled at the same point of every boot
    (device running, traffic done), stay flat: a reboot (SET_STATUS 0, then the driver's fresh start) leaves
    nothing behind."""
    boots = int(os.environ.get(BOOTS_ENV, BOOTS))
    assert boots >= 3, f"{BOOTS_ENV}={boots}: at least 3 boots (boot 1 stands apart)"
    sock = tmp_path / "vu.sock"
    pcap = tmp_path / "wire.pcap"
    serve = started.enter_context(ServeProcess(str(sock), f"sim:virtio-net,wire=loopback,pcap={pcap}",
                                               log=tmp_path / "serve.log"))
    serve.wait_listening(READY_TIMEOUT)
    guest = started.enter_context(Guest(tmp_path / "guest", kernel=kernel, shared_memory=True, allow_reboot=True,
                                        extra_args=vhost_user_net_args(sock, mac=MAC)))
    began = time.monotonic()
    guest.boot(guest_job(boots - 1, hold=True))
    samples: list[tuple[int, int]] = []  # (fds, RSS KiB) per boot
    pos = 0
    for boot in range(1, boots + 1):
        pos = hold_point(guest, boot, pos)
        samples.append((fd_count(serve.pid), rss_kib(serve.pid)))
        (guest.job_dir / f"go-{boot}").touch()
        result = guest.wait_job(BOOT_TIMEOUT, boot=boot, since=pos)
        assert result.exit_code == 0, f"boot {boot} job exit {result.exit_code}:\n{guest.console()[-3000:]}"
        check_boot(read_env(guest.job_dir / f"result-{boot}.env"), boot)
    assert guest.wait_exit(EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{guest.console()[-3000:]}"
    elapsed = time.monotonic() - began
    record_property("boots_s", round(elapsed, 1))

    fds, rss = [f for f, _ in samples], [r for _, r in samples]
    figures = (f"{boots} boots in {elapsed:.1f} s ({elapsed / boots:.1f} s a boot); serve fds per boot {fds}; "
               f"RSS KiB at boot 1 {rss[0]}, 2 {rss[1]}, {boots // 2} {rss[boots // 2 - 1]}, {boots} {rss[-1]} "
               f"(max {max(rss)})")
    print(figures)
    # From boot 2 on: in boot 1 serve also holds QEMU's two SET_VRING_ERR eventfds, which QEMU sends once per
    # connection (vhost_virtqueue_init) and the session closes with the rings at the first reset.
    assert len(set(fds[1:])) == 1 and fds[0] >= fds[1], f"serve's fd count changed across boots: {figures}"
    assert rss[-1] - rss[1] < RSS_SLACK_KIB, f"serve's RSS grew {rss[-1] - rss[1]} KiB from boot 2: {figures}"

    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", EXIT_TIMEOUT)
    assert serve.stop() == 0, f"serve exit status; log:\n{serve.proc.tail()}"
    log = serve.log()
    events = [m.group(1) for m in re.finditer(r"vhost-user#1: (DRIVER_OK|device reset)", log)]
    starts = [name for i, name in enumerate(events) if i == 0 or events[i - 1] != name].count("DRIVER_OK")
    assert starts == boots, f"{starts} device starts for {boots} boots; log:\n{log[-3000:]}"
    assert "vhost-user#2" not in log, f"QEMU opened a second session; log:\n{log[-3000:]}"
    for bad in ("refused", "session dropped", "WARNING", "ERROR", "Traceback"):
        assert bad not in log, f"{bad!r} in the backend log:\n{log[-3000:]}"
    check_pcap(pcap, boots=boots)
