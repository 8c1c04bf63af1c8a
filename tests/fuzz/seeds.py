"""Seed corpora of the fuzz targets, written to ``tests/fuzz/corpus/<target>/`` (committed; small files).

``python -m tests.fuzz.seeds`` rewrites them:

* vhost-user-session: the frontend side of every captured DPDK virtio_user session
  (``tests/data/captures``), features adapted to this backend's offer as the replay test does; each
  whole session and its bring-up up to DRIVER_OK;
* vfio-user-server / vfio-user-client: a real ``VfioUserPciDevice`` talking to the real server through a
  recording proxy: the client's messages (a driver bring-up with a frame exchanged, and the fuzz
  client's scripted calls) and the server's replies to each script;
* split-ring / rtl-ring: well-formed rings (single and chained buffers, indirect tables, EVENT_IDX,
  IN_ORDER, mergeable receive buffers, full rings) and a few classic malformed ones (a loop, an index
  past the ring, avail idx ahead by more than the ring);
* packed-ring: the same for packed rings (sizes that are not powers of two, NOTIFICATION_DATA, a list
  across the ring's end) and packed faults (a list longer than the ring, a list's slot not made available,
  INDIRECT in a NEXT list, a notification past the ring).

``python -m tests.fuzz.seeds [TARGET...]`` rewrites only the named corpora.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
from typing import Final

from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci import vfio_user_msg as vm
from backend.pci.vfio_user import VfioUserPciDevice
from backend.targets import default_registry
from backend.vhost_user import messages as m
from backend.vhost_user.session import VhostUserSession
from backend.virtio.features import DeviceStatus
from backend.virtio.packed_ring import DESC as PACKED_DESC
from backend.virtio.packed_ring import PackedDescFlags
from backend.virtio.split_ring import DESC, DescFlags
from sim.memory import GuestMemory
from sim.vfio_user.daemon import model_factory
from sim.vfio_user.server import MAX_MESSAGE, SERVER_MAX_FDS, VfioUserServer
from testbenches.driver.virtio_net import GuestNetDriver
from testbenches.frames import test_frame
from tests.captures import JSONL, header_flags, payload_from_record, read_capture
from tests.fuzz import ring, vfio_user
from tests.fuzz.records import Record, encode, fd_kind, memfd_kind
from tests.fuzz.targets import CORPUS

#: Client scripts recorded for the vfio-user client corpus (bits of tests.fuzz.vfio_user._calls).
SCRIPTS: Final = (0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)


# --- vhost-user ---------------------------------------------------------------------------------


def vhost_user_seeds() -> dict[str, bytes]:
    dev = VirtioPciVdpaDevice(default_registry().open("sim:virtio-net,wire=loopback"))
    session = VhostUserSession(dev)
    offered, offered_proto = session.offered_features(), session.offered_protocol_features()
    session.close()
    out: dict[str, bytes] = {}
    for path in JSONL:
        sessions: dict[int, list[Record]] = {}
        upto: dict[int, int] = {}
        for rec in read_capture(path):
            if rec["dir"] != "F->B":
                continue
            req = m.FrontendRequest(rec["request"])
            payload = payload_from_record(req, rec)
            if isinstance(payload, m.U64) and req is m.FrontendRequest.SET_FEATURES:
                payload = m.U64(payload.value & offered)
            elif isinstance(payload, m.U64) and req is m.FrontendRequest.SET_PROTOCOL_FEATURES:
                payload = m.U64(payload.value & offered_proto)
            if isinstance(payload, m.MemoryTable):
                kinds = bytes(memfd_kind(r.mmap_offset + r.memory_size) for r in payload.regions)
            else:
                kinds = bytes(rec["nfds"])  # eventfds
            msg = m.Message(req, payload, tuple(range(100, 100 + len(kinds))), header_flags(rec))
            recs = sessions.setdefault(rec["session"], [])
            recs.append(Record(kinds, msg.encode()[0]))
            if req is m.FrontendRequest.SET_STATUS and rec.get("status", 0) & DeviceStatus.DRIVER_OK:
                upto.setdefault(rec["session"], len(recs))
        for sid, recs in sessions.items():
            out[f"{path.stem}-s{sid}"] = encode(recs)
            if sid in upto:
                out[f"{path.stem}-s{sid}-bringup"] = encode(recs[:upto[sid]])
    return out


# --- vfio-user ----------------------------------------------------------------------------------


def _kinds(fds: list[int]) -> bytes:
    return bytes(fd_kind(fd) for fd in fds[:8])


def record_vfio_user(script: int | None) -> tuple[list[Record], list[Record]]:
    """(client messages, server replies) of one session: the driver's bring-up and a frame exchanged
    (``script`` None), or the fuzz client's scripted calls."""
    to_server: list[Record] = []
    to_client: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-seed-") as d:
        server = VfioUserServer(os.path.join(d, "real.sock"), model_factory(vfio_user.MODEL), max_devices=1)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(d, "proxy.sock"))
        listener.listen(1)

        def proxy() -> None:
            c, _ = listener.accept()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(server.path)
            with c, s:
                while True:
                    try:
                        req = vm.recv_message(c, max_size=MAX_MESSAGE, max_fds=SERVER_MAX_FDS)
                    except vm.ConnectionClosed:
                        return
                    to_server.append(Record(_kinds(req.fds), req.header.pack() + req.payload))
                    vm.send_message(s, req.header, req.payload, req.fds)
                    req.close_fds()
                    if req.header.no_reply:
                        continue
                    rep = vm.recv_message(s, max_size=MAX_MESSAGE, max_fds=8)
                    to_client.append(Record(_kinds(rep.fds), bytes([0]) + rep.header.pack() + rep.payload))
                    vm.send_message(c, rep.header, rep.payload, rep.fds)
                    rep.close_fds()

        t = threading.Thread(target=proxy, name="seed-proxy")
        t.start()
        try:
            dev = VfioUserPciDevice(os.path.join(d, "proxy.sock"))
            try:
                if script is None:
                    mem = GuestMemory.single(1 << 20)
                    try:
                        drv = GuestNetDriver(dev, mem, queue_size=16)
                        drv.init()
                        drv.exchange([test_frame(0, 64)])
                        drv.close()
                    finally:
                        mem.close()
                else:
                    for bit, call in enumerate(vfio_user._calls(dev, d)):
                        if script & (1 << bit):
                            call()
            finally:
                dev.close()
        finally:
            t.join(10)
            listener.close()
            server.close()
    return to_server, to_client


def vfio_user_seeds() -> tuple[dict[str, bytes], dict[str, bytes]]:
    servers: dict[str, bytes] = {}
    clients: dict[str, bytes] = {}
    to_server, _ = record_vfio_user(None)
    servers["driver-bringup-exchange"] = encode(to_server)
    for script in SCRIPTS:
        to_server, to_client = record_vfio_user(script)
        servers[f"script-{script:02x}"] = encode(to_server)
        clients[f"script-{script:02x}"] = bytes([script]) + encode(to_client)
    return servers, clients


# --- rings --------------------------------------------------------------------------------------


def _patch(off: int, data: bytes) -> bytes:
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i:i + 255]
        out += struct.pack("<HB", off + i, len(chunk)) + chunk
    return out


def _ring(q: int, descs: list[tuple[int, int, int, int]], heads: list[int], avail_idx: int | None = None,
          used_event: int | None = None, size: int = 128, table: int | None = None) -> bytes:
    desc, avail, _ = ring.LAYOUT[q]
    out = _patch(desc if table is None else table, b"".join(DESC.pack(*d) for d in descs))
    idx = len(heads) if avail_idx is None else avail_idx
    out += _patch(avail, struct.pack("<HH", 0, idx) + b"".join(struct.pack("<H", h) for h in heads))
    if used_event is not None:
        out += _patch(avail + 4 + 2 * size, struct.pack("<H", used_event))
    return out


def ring_seeds() -> dict[str, bytes]:
    N, W, IND = int(DescFlags.NEXT), int(DescFlags.WRITE), int(DescFlags.INDIRECT)
    log2 = 6  # 128 entries: size = 1 << (1 + 6)
    all_kicks = ring.KICK_RX | ring.KICK_TX | ring.WIRE_FRAME
    head = bytes([log2, log2])
    frame = bytes(12) + test_frame(0, 64)
    seeds = {
        "tx-rx-single": head + bytes([0, all_kicks])
        + _ring(1, [(0x6000, len(frame), 0, 0)], [0]) + _patch(0x6000, frame)
        + _ring(0, [(0x8000, 2048, W, 0)], [0]),
        "tx-chain-rx-chain": head + bytes([0, all_kicks])
        + _ring(1, [(0x6000, 12, N, 1), (0x6010, 64, 0, 0)], [0]) + _patch(0x6000, bytes(12))
        + _patch(0x6010, test_frame(1, 64)) + _ring(0, [(0x8000, 12, W | N, 1), (0x8010, 2000, W, 0)], [0]),
        "tx-indirect": head + bytes([0b10, all_kicks])
        + _ring(1, [(0x7000, 32, IND, 0)], [0])
        + _patch(0x7000, DESC.pack(0x6000, 12, N, 1) + DESC.pack(0x6010, 64, 0, 0))
        + _patch(0x6010, test_frame(2, 64)) + _ring(0, [(0x8000, 2048, W, 0)], [0]),
        "event-idx": head + bytes([0b1, all_kicks | ring.KICK_AGAIN])
        + _ring(1, [(0x6000, len(frame), 0, 0), (0x6100, len(frame), 0, 0)], [0, 1], used_event=0)
        + _patch(0x6000, frame) + _patch(0x6100, frame) + _ring(0, [(0x8000, 2048, W, 0)], [0], used_event=1),
        "in-order-mrg": head + bytes([0b1100, all_kicks])
        + _ring(1, [(0x6000, len(frame), 0, 0)], [0]) + _patch(0x6000, frame)
        + _ring(0, [(0x8000 + 0x40 * i, 0x40, W, 0) for i in range(4)], [0, 1, 2, 3]),
        "full-ring-small": bytes([1, 1, 0, all_kicks])
        + _ring(1, [(0x6000, len(frame), 0, 0)] * 4, [0, 1, 2, 3], size=4) + _patch(0x6000, frame)
        + _ring(0, [(0x8000, 2048, W, 0)] * 4, [0, 1, 2, 3], size=4),
        "loop": head + bytes([0, ring.KICK_TX]) + _ring(1, [(0x6000, 8, N, 1), (0x6000, 8, N, 0)], [0]),
        "head-past-ring": head + bytes([0, ring.KICK_TX]) + _ring(1, [(0x6000, 8, 0, 0)], [200]),
        "avail-ahead": head + bytes([0, ring.KICK_TX]) + _ring(1, [(0x6000, 8, 0, 0)], [0], avail_idx=300),
        "outside-mapping": head + bytes([0, all_kicks]) + _ring(1, [(0x10_0000, 76, 0, 0)], [0])
        + _ring(0, [(0xFFFF_FFFF_F000, 2048, W, 0)], [0]),
    }
    return seeds


def _packed(q: int, descs: list[tuple[int, int, int, int]], first: int = 0, event: bytes | None = None) -> bytes:
    """Packed descriptors (addr, len, id, flags) from slot ``first``, each made available for wrap 1 (AVAIL set)."""
    desc, driver, _ = ring.LAYOUT[q]
    avail = int(PackedDescFlags.AVAIL)
    out = _patch(desc + 16 * first, b"".join(PACKED_DESC.pack(a, n, i, f | avail) for a, n, i, f in descs))
    if event is not None:
        out += _patch(driver, event)
    return out


def packed_ring_seeds() -> dict[str, bytes]:
    N, W, IND = int(PackedDescFlags.NEXT), int(PackedDescFlags.WRITE), int(PackedDescFlags.INDIRECT)
    all_kicks = ring.KICK_RX | ring.KICK_TX | ring.WIRE_FRAME
    # feature_bits: bit i of tests.fuzz.ring.PACKED_OPTIONAL (EVENT_IDX, INDIRECT, IN_ORDER, MRG_RXBUF, NOTIF._DATA)
    EV, INDF, INO, MRG, ND = 1, 2, 4, 8, 16
    head = bytes([127, 99])  # 128 and 100 entries
    frame = bytes(12) + test_frame(0, 64)
    rx = _packed(0, [(0x8000, 2048, 0, W)])
    return {
        "tx-rx-single": head + bytes([0, all_kicks]) + _packed(1, [(0x6000, len(frame), 0, 0)])
        + _patch(0x6000, frame) + rx,
        "tx-rx-notification-data": head + bytes([ND, all_kicks]) + _packed(1, [(0x6000, len(frame), 5, 0)])
        + _patch(0x6000, frame) + _packed(0, [(0x8000, 2048, 7, W)]),
        "tx-chain-rx-chain": head + bytes([0, all_kicks])
        + _packed(1, [(0x6000, 12, 0, N), (0x6010, 64, 3, 0)]) + _patch(0x6000, bytes(12))
        + _patch(0x6010, test_frame(1, 64)) + _packed(0, [(0x8000, 12, 0, W | N), (0x8010, 2000, 9, W)]),
        "tx-indirect": head + bytes([INDF, all_kicks]) + _packed(1, [(0x7000, 32, 4, IND)])
        + _patch(0x7000, PACKED_DESC.pack(0x6000, 12, 0, 0) + PACKED_DESC.pack(0x6010, 64, 0, 0))
        + _patch(0x6010, test_frame(2, 64)) + rx,
        "event-idx": head + bytes([EV | ND, all_kicks | ring.KICK_AGAIN])
        + _packed(1, [(0x6000, len(frame), 0, 0), (0x6100, len(frame), 1, 0)], event=struct.pack("<HH", 1 | 1 << 15, 2))
        + _patch(0x6000, frame) + _patch(0x6100, frame) + rx,
        "in-order-mrg": head + bytes([INO | MRG, all_kicks]) + _packed(1, [(0x6000, len(frame), 0, 0)])
        + _patch(0x6000, frame) + _packed(0, [(0x8000 + 0x40 * i, 0x40, i, W) for i in range(4)]),
        "full-ring-odd": bytes([2, 4, ND, all_kicks]) + _packed(1, [(0x6000, len(frame), i, 0) for i in range(5)])
        + _patch(0x6000, frame) + _packed(0, [(0x8000, 2048, i, W) for i in range(3)]),
        # Three lists, then one from the last slot across the end: its next slot holds the first list's used
        # descriptor by then (the driver never reclaimed it), not one available for the flipped wrap counter.
        "list-across-end": bytes([127, 3, 0, ring.KICK_TX]) + _packed(1, [(0x6010, 76, i, 0) for i in range(3)])
        + _packed(1, [(0x6000, 12, 3, N)], first=3) + _patch(0x6000, bytes(12)) + _patch(0x6010, frame),
        "list-longer-than-ring": head + bytes([0, ring.KICK_TX]) + _packed(1, [(0x6000, 8, 0, N)] * 100),
        "list-slot-not-available": head + bytes([0, ring.KICK_TX])
        + _packed(1, [(0x6000, 8, 0, N)]) + _patch(ring.LAYOUT[1][0] + 16, PACKED_DESC.pack(0x6010, 8, 1, 0)),
        "indirect-in-list": head + bytes([INDF, ring.KICK_TX]) + _packed(1, [(0x6000, 8, 0, N), (0x7000, 16, 1, IND)])
        + _patch(0x7000, PACKED_DESC.pack(0x6010, 8, 0, 0)),
        "notify-past-ring": head + bytes([ND, ring.KICK_TX | ring.HOSTILE_NOTIFY])
        + _packed(1, [(0x6000, len(frame), 0, 0)]) + _patch(0x6000, frame) + bytes([0xF0]),
        "outside-mapping": head + bytes([0, all_kicks]) + _packed(1, [(0x10_0000, 76, 0, 0)])
        + _packed(0, [(0xFFFF_FFFF_F000, 2048, 0, W)]),
    }


# --- writing ------------------------------------------------------------------------------------


def write(target: str, seeds: dict[str, bytes]) -> None:
    d = CORPUS / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, data in seeds.items():
        digest = hashlib.sha1(data).hexdigest()[:8]
        (d / f"{name}-{digest}").write_bytes(data)


def main(only: list[str]) -> None:
    def wanted(*names: str) -> bool:
        return not only or any(n in only for n in names)

    if wanted("vhost-user-session"):
        write("vhost-user-session", vhost_user_seeds())
    if wanted("vfio-user-server", "vfio-user-client"):
        servers, clients = vfio_user_seeds()
        write("vfio-user-server", servers)
        write("vfio-user-client", clients)
    if wanted("split-ring", "rtl-ring"):
        rings = ring_seeds()
        write("split-ring", rings)
        write("rtl-ring", rings)
    if wanted("packed-ring"):
        write("packed-ring", packed_ring_seeds())
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
