"""One vhost-user connection: the control-plane state machine between a frontend and a ``VdpaDevice``.

The session turns decoded messages (:mod:`backend.vhost_user.messages`) into ``VdpaDevice`` calls
and builds the replies; it never touches the socket (the server does) and never touches packets
(the device moves them through its own DMA mappings, doorbells and interrupts).

What it does with the device:

* features: the frontend is offered the device's features minus what this backend cannot carry
  (see :data:`HIDDEN_FEATURES`) plus ``VHOST_USER_F_PROTOCOL_FEATURES``. Transport features the
  backend uses for itself and the frontend never sees (``RING_RESET``, ``SUSPEND``) are added to
  what is written to the device when it offers them. SET_FEATURES negotiates with the device
  right away (ACKNOWLEDGE, DRIVER, features, FEATURES_OK), so frontends with and without the
  STATUS protocol feature both end up with a negotiated device. Other features once every ring has
  stopped (DPDK's virtio_user reconfiguring a port with offloads, no reset message) reset the device
  and negotiate again; under a running ring they are refused. Offloads (CSUM, GUEST_CSUM, the TSO,
  UFO and USO bits) pass through as the device offers them;
* memory: SET_MEM_TABLE builds a :class:`~backend.vhost_user.memory.MemoryTable` and maps it into
  the device (``iova = guest_phys_addr``); a later table replaces it in place, but only if it still
  covers every ring already given to the device;
* rings: SET_VRING_NUM/BASE/ADDR/KICK/CALL are checked and kept here (ring addresses are
  translated from frontend virtual addresses to guest-physical ones); an enabled ring is handed
  to the device (size, addresses, state, kick eventfd as doorbell, call eventfd as MSI-X vector,
  ready) and goes live at DRIVER_OK, or at once when the device is already running. Without the
  STATUS protocol feature the first enabled ring sets DRIVER_OK;
* stop: GET_VRING_BASE stops the ring and returns its base. The base comes from
  ``get_vq_state`` when the device can report it; a plain virtio-pci function cannot, so the ring
  is stopped first (queue reset with ``RING_RESET``) and the base is the used index read from guest
  memory. That equals the device's last_avail_idx only when the device held no buffers at the
  moment it stopped (true of the simulator's model; a limitation on real hardware). QEMU 7.2 stops a
  running device with SET_STATUS 0 first and GET_VRING_BASE after it (``vhost_dev_stop``): the reset
  stops each running ring the same way and keeps where it stopped, and a GET_VRING_BASE of a ring not
  set up again since answers that (a migration carries it to the destination's SET_VRING_BASE).

Dirty logging (live migration): ``VHOST_F_LOG_ALL`` and ``LOG_SHMFD`` are offered when the atomic OR
of :mod:`backend.vhost_user.dirty_log` is available. SET_LOG_BASE maps the frontend's log (and is
answered: QEMU waits for it), SET_VRING_ADDR may change only the logging flag and address of a
running ring, and while LOG_ALL is on every ring the device runs goes through a used-ring relay
(:mod:`backend.vhost_user.log_shadow`) that logs what the device wrote. Turning LOG_ALL on or off
while a ring runs moves it between the direct path and the relay at the same ring state, which
needs a device that reports and restores last_avail_idx (a quirk's vq-state register); otherwise
the toggle is refused with the reason. SEND_RARP (protocol feature RARP) is logged: the device
cannot announce on the guest's behalf without GUEST_ANNOUNCE, which needs its control queue.

Packed rings (``VIRTIO_F_RING_PACKED``) are offered when the device offers them. SET_VRING_ADDR then names the
descriptor ring and the driver and device event suppression areas (in the avail and used fields), and
SET/GET_VRING_BASE carry the packed state (:mod:`backend.vhost_user.ring_state`): bits 0-14 the avail
index, 15 its wrap counter, 16-30 the used index, 31 its wrap counter; a frontend sending bits 16-31 as zero
(DPDK 22.11's virtio_user sends 0x8000 at start) means used = avail. A device without a state register runs a
packed ring only from its start (0 with both wrap counters 1); GET_VRING_BASE on it stops the ring and reads
the position from the ring: where the driver's AVAIL bits end, which is the
device's position when it had used every buffer made available (a drained TX ring) and past the device's
position by the buffers a receive ring still had posted. Not with packed rings: dirty logging (the used-ring
relay is split) and multiqueue (the backend's control queue is split), both refused at SET_FEATURES.

Known limits, each answered with a logged error rather than a silent misbehaviour: a non-zero SET_VRING_BASE
needs a device that can set last_avail_idx (``VdpaDevice.set_vq_state``); SET_VRING_KICK without an fd
(polling) is refused; SET_VRING_ENABLE 0 on a running ring is recorded but does not stop the device's queue (virtio-pci
cannot pause one queue and resume it at the same index), so the frontend must not post buffers
to a ring it disabled.

SET_OWNER must come before anything that changes state. Read-only feature queries (GET_FEATURES,
GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS) and SET_BACKEND_REQ_FD are taken before it,
because QEMU sends them first (``tests/data/captures/qemu-7.2-guest-sequence.txt``). One exception, for a
frontend resuming rings it ran on an earlier backend (DPDK 22.11's virtio_user reconnecting, which never sends
SET_OWNER again): a ring stop (SET_VRING_ENABLE 0 or GET_VRING_BASE on an existing ring) before SET_OWNER is
honoured and implies the owner, with one log line; any other request before SET_OWNER is still refused.

Resumed rings: such a frontend then sends SET_VRING_BASE 0 for rings whose used ring has moved on. A ring that
goes live with base 0 while the frontend's used idx is not 0 starts at the used idx (what DPDK's vhost library
does): every buffer made available after it is taken again, so a TX frame may be sent twice and nothing the
device had not returned is lost. That needs a device that can set last_avail_idx; a plain virtio-pci queue
always starts at 0, so there the ring is refused with the reason rather than run into DEVICE_NEEDS_RESET.

Errors: a request that cannot be honoured raises :class:`SessionError` inside :meth:`handle`; the
session logs the reason and, when the frontend asked for a reply (``need_reply``), answers with
a failure ack; otherwise :class:`SessionClosed` tells the server to drop the connection.

Events from the device (:meth:`watched` and :meth:`service`, run by the server between messages) are
:mod:`backend.vhost_user.device_events`: a configuration change or DEVICE_NEEDS_RESET becomes
``CONFIG_CHANGE_MSG`` on the back-end request channel (``SET_BACKEND_REQ_FD``); a device whose connection
hangs up ends the session at once, with the cause in one line.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from backend.device import DeviceDirtyLog, NotSupported, VdpaDevice, VdpaError, VqState
from backend.fd_channel import close_fds, not_an_eventfd
from backend.pci.device import PciError
from backend.vhost_user import messages as m
from backend.vhost_user.backend_channel import BackendChannelError
from backend.vhost_user.device_events import DeviceEvents, DeviceLost
from backend.vhost_user.device_log import DeviceLogError, device_log_range, device_logging
from backend.vhost_user.dirty_log import DirtyLog, DirtyLogError, atomic_or_available
from backend.vhost_user.log_shadow import LogShadow, UsedRelay, shadow_range
from backend.vhost_user.memory import AddressSpace, MemoryTable, MemoryTableError
from backend.vhost_user.ring_state import packed_num, packed_ring_position, packed_state
from backend.vhost_user.shadow_cvq import ControlQueueError, ShadowControlQueue
from backend.virtio.features import NET_DEPENDENCIES, DeviceStatus, F, NetF, bits, has
from backend.virtio.packed_ring import EVENT_SIZE, PackedLayout, is_valid_packed_size
from backend.virtio.split_ring import SplitLayout, is_valid_split_size

log = logging.getLogger(__name__)

#: virtio-net features that live on the control queue. Frontends run their own control queue and
#: only tell the backend which rings to use, so the device's control queue belongs to the backend
#: (:mod:`backend.vhost_user.shadow_cvq`); of its commands only the queue-pair count is carried
#: (MQ, from SET_VRING_ENABLE). The others are not offered.
CVQ_FEATURES: Final = bits(NetF.CTRL_VQ, NetF.CTRL_GUEST_OFFLOADS, *(
    r.feature for r in NET_DEPENDENCIES if NetF.CTRL_VQ in r.all_of and r.feature != NetF.MQ))
#: Device features never offered to the frontend: ACCESS_PLATFORM (needs IOTLB messages, not implemented),
#: and the transport features this backend keeps for itself.
HIDDEN_FEATURES: Final = ((1 << F.ACCESS_PLATFORM) | (1 << F.RING_RESET)
                          | (1 << F.SUSPEND) | (1 << m.VHOST_USER_F_PROTOCOL_FEATURES)
                          | (1 << m.VHOST_F_LOG_ALL) | CVQ_FEATURES)
#: The vhost feature that turns dirty logging on; it is the backend's, never written to the device.
LOG_ALL: Final = 1 << m.VHOST_F_LOG_ALL
#: Protocol features of live migration, offered only when the dirty log can be written with an atomic OR.
LOG_PROTOCOL_FEATURES: Final = m.ProtocolFeature.LOG_SHMFD.mask | m.ProtocolFeature.RARP.mask
#: Transport features the backend negotiates with the device on its own behalf when offered:
#: ACCESS_PLATFORM because every frontend region is mapped through the device's IOMMU (a device
#: behind an IOMMU may refuse FEATURES_OK without it, as QEMU's iommu_platform=on device does; the
#: frontend is not offered it, which would need IOTLB messages), RING_RESET and SUSPEND to stop rings.
BACKEND_FEATURES: Final = (1 << F.ACCESS_PLATFORM) | (1 << F.RING_RESET) | (1 << F.SUSPEND)
#: Protocol features implemented by this session.
SUPPORTED_PROTOCOL_FEATURES: Final = (m.ProtocolFeature.MQ.mask | m.ProtocolFeature.REPLY_ACK.mask
                                      | m.ProtocolFeature.CONFIG.mask | m.ProtocolFeature.STATUS.mask
                                      | m.ProtocolFeature.RESET_DEVICE.mask | m.ProtocolFeature.BACKEND_REQ.mask)

_PRE_OWNER: Final = frozenset({
    m.FrontendRequest.SET_OWNER, m.FrontendRequest.GET_FEATURES, m.FrontendRequest.GET_PROTOCOL_FEATURES,
    m.FrontendRequest.SET_PROTOCOL_FEATURES, m.FrontendRequest.GET_QUEUE_NUM,
    m.FrontendRequest.GET_MAX_MEM_SLOTS,
    m.FrontendRequest.SET_BACKEND_REQ_FD,  # QEMU sends it during backend init, before SET_OWNER
})
#: Ring stops a frontend resuming on a restarted backend sends before (and instead of) SET_OWNER.
_RESUME_STOPS: Final = frozenset({m.FrontendRequest.SET_VRING_ENABLE, m.FrontendRequest.GET_VRING_BASE})
_NEGOTIATED: Final = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK


class SessionError(Exception):
    """A request this session refuses; ``reason`` is logged and the frontend told if it asked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionClosed(Exception):
    """The session cannot go on; the server must close the connection (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RingState:
    """What the frontend said about one ring; addresses are guest-physical (translated)."""

    num: int = 0
    state: VqState = field(default_factory=VqState)  # where the ring goes live (SET_VRING_BASE)
    packed: bool = False  # VIRTIO_F_RING_PACKED: avail/used are the driver/device event suppression areas
    desc: int | None = None
    avail: int | None = None
    used: int | None = None
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    enabled: bool = False
    pushed: bool = False  # handed to the device (ready)
    stopped: bool = False  # GET_VRING_BASE stopped it
    log_used: bool = False  # VHOST_VRING_F_LOG: writes to the used ring are logged at log_addr
    log_addr: int = 0  # log_guest_addr (guest-physical)

    def ranges(self) -> list[tuple[int, int]]:
        """The ring parts' guest-physical ranges (empty until the address is known)."""
        if self.desc is None or self.avail is None or self.used is None or not self.num:
            return []
        if self.packed:
            return [(self.desc, PackedLayout(self.num).desc_bytes), (self.avail, EVENT_SIZE), (self.used, EVENT_SIZE)]
        lay = SplitLayout(self.num)
        return [(self.desc, lay.desc_bytes), (self.avail, lay.avail_bytes), (self.used, lay.used_bytes)]

    def fds(self) -> Iterable[int]:
        return (fd for fd in (self.kick, self.call, self.err) if fd is not None)


@dataclass
class SessionStats:
    messages: int = 0
    errors: list[str] = field(default_factory=list)
    mem_tables: int = 0
    rarp: list[str] = field(default_factory=list)  # MACs of SEND_RARP requests


class VhostUserSession:
    """Per-connection state; :meth:`handle` one decoded message at a time, :meth:`close` at the end.

    The session owns ``device`` from construction: :meth:`close` closes it.
    """

    def __init__(self, device: VdpaDevice, *, name: str = "vhost-user") -> None:
        self.device = device
        self.name = name
        self.owner = False
        self._owner_implied = False  # a resuming frontend's ring stop came first (see the module notes)
        self.features = 0  # acked by the frontend
        self.protocol_features = 0
        self.table: MemoryTable | None = None
        self.rings: dict[int, RingState] = {}
        self.stats = SessionStats()
        self._status = 0  # what the frontend set through SET_STATUS
        self._closed = False
        self._cvq: ShadowControlQueue | None = None  # the device's control queue, when MQ is negotiated
        self._pairs_set = 1  # queue pairs the device was told to use (1 after every reset)
        self._shadow = LogShadow(device, self._report)  # the dirty log and the rings relayed while logging
        #: where the rings running at the last reset stopped (packed, state), for a GET_VRING_BASE after it
        self._stopped_at_reset: dict[int, tuple[bool, VqState]] = {}
        self.events = DeviceEvents(device, name)  # configuration interrupt, back-end channel, peer watch

    # --- offers ---------------------------------------------------------------------------

    def offered_features(self) -> int:
        offer = self.device.get_device_features()
        if not has(offer, NetF.CTRL_VQ):
            offer &= ~(1 << NetF.MQ)  # (a device breaking NETFEAT-DEV-09) the backend could not set the pairs
        offer = (offer & ~HIDDEN_FEATURES) | (1 << m.VHOST_USER_F_PROTOCOL_FEATURES)
        return offer | (LOG_ALL if atomic_or_available() else 0)

    def _data_vq_count(self) -> int:
        """Rings a frontend may use: all but the control queue (the last, odd one) when the device has one."""
        count = self.device.get_vq_count()
        if has(self.device.get_device_features(), NetF.CTRL_VQ) and count % 2:
            return count - 1
        return count

    def offered_protocol_features(self) -> int:
        return SUPPORTED_PROTOCOL_FEATURES | (LOG_PROTOCOL_FEATURES if atomic_or_available() else 0)

    @property
    def dirty_log(self) -> DirtyLog | None:
        """The log SET_LOG_BASE mapped (None before it)."""
        return self._shadow.log

    @property
    def device_logging(self) -> bool:
        """Dirty logging is on and the device logs its own writes (no ring relayed)."""
        return self._shadow.device_log is not None

    @property
    def relayed_rings(self) -> frozenset[int]:
        """Rings whose used ring goes through the backend's relay (while logging)."""
        return frozenset(self._shadow.relays)

    @property
    def logging_on(self) -> bool:
        """The frontend has VHOST_F_LOG_ALL on: every device write must reach the dirty log."""
        return bool(self.features & LOG_ALL)

    def has_protocol(self, feature: m.ProtocolFeature) -> bool:
        return bool(self.protocol_features & feature.mask)

    # --- entry point ----------------------------------------------------------------------

    def handle(self, msg: m.Message) -> list[m.Message]:
        """Apply ``msg``; return the replies to send. Raises :class:`SessionClosed` to end the session.

        The session owns ``msg.fds`` from this call on: it keeps the ones it uses and closes the rest.
        """
        if self._closed:
            self._close_fds(msg.fds)
            raise SessionClosed("session already closed")
        self.stats.messages += 1
        if not isinstance(msg.request, m.FrontendRequest) or msg.is_reply:
            self._close_fds(msg.fds)
            raise SessionClosed(f"{msg.name}: not a frontend request")
        try:
            implied = not self.owner and msg.request not in _PRE_OWNER and _is_resume_stop(msg)
            if not self.owner and msg.request not in _PRE_OWNER and not implied:
                self._close_fds(msg.fds)
                raise SessionError(f"{msg.name} before SET_OWNER")
            reply = self._dispatch(msg)
            if implied:
                self.owner = self._owner_implied = True
                log.info("%s: %s before SET_OWNER: a frontend resuming rings it ran on an earlier backend; owner "
                         "implied", self.name, msg.name)
        except SessionError as exc:
            return self._refuse(msg, exc.reason)
        except (VdpaError, PciError, MemoryTableError, m.VhostUserProtocolError) as exc:
            try:
                self.events.check_peer()  # a dead device ends the session rather than refusing one request
            except DeviceLost as lost:
                raise SessionClosed(f"device lost: {lost.reason}") from None
            return self._refuse(msg, f"device refused: {exc}")
        spec = m.spec_of(msg.request)
        if spec.explicit_reply:
            return [reply] if reply is not None else []
        if reply is not None:  # SET_LOG_BASE with LOG_SHMFD: its u64 reply doubles as the ack
            return [reply]
        if msg.need_reply:
            return [m.Message.ack(msg, 0)]
        return []

    def _refuse(self, msg: m.Message, reason: str) -> list[m.Message]:
        text = f"{msg.name} refused: {reason}"
        self.stats.errors.append(f"{self.name}: {text}")
        spec = m.spec_of(msg.request)
        if msg.request is m.FrontendRequest.GET_CONFIG:
            log.warning("%s: %s", self.name, text)
            return [m.Message.reply_to(msg, m.EMPTY)]  # an empty GET_CONFIG reply signals failure
        if (msg.need_reply and not spec.explicit_reply) or isinstance(msg.payload, m.LogDescription):
            log.warning("%s: %s", self.name, text)  # (QEMU waits for SET_LOG_BASE's reply either way)
            return [m.Message.ack(msg, 1)]
        raise SessionClosed(text)  # the server logs the session's end with this reason: one line

    def _dispatch(self, msg: m.Message) -> m.Message | None:
        R = m.FrontendRequest
        p = msg.payload
        req = msg.request
        assert isinstance(req, m.FrontendRequest)  # handle() checked it
        match req:
            case R.SET_OWNER:
                if self._owner_implied:
                    raise SessionError("SET_OWNER after the frontend resumed its rings without it (owner implied)")
                if self.owner:
                    raise SessionError("SET_OWNER sent twice")
                self.owner = True
            case R.RESET_OWNER | R.RESET_DEVICE:
                self._reset()
            case R.GET_FEATURES:
                return m.Message.reply_to(msg, m.U64(self.offered_features()))
            case R.SET_FEATURES:
                self._set_features(_u64(p))
            case R.GET_PROTOCOL_FEATURES:
                return m.Message.reply_to(msg, m.U64(self.offered_protocol_features()))
            case R.SET_PROTOCOL_FEATURES:
                value = _u64(p)
                extra = value & ~self.offered_protocol_features()
                if extra:
                    raise SessionError(f"protocol features {extra:#x} were not offered")
                self.protocol_features = value
            case R.GET_QUEUE_NUM:
                return m.Message.reply_to(msg, m.U64(max(1, self.device.get_vq_count() // 2)))
            case R.GET_MAX_MEM_SLOTS:
                return m.Message.reply_to(msg, m.U64(m.MAX_MEM_REGIONS))
            case R.SET_MEM_TABLE:
                self._set_mem_table(msg)
            case R.SET_VRING_NUM:
                self._set_vring_num(_state(p))
            case R.SET_VRING_BASE:
                self._set_vring_base(_state(p))
            case R.SET_VRING_ADDR:
                assert isinstance(p, m.VringAddr)
                self._set_vring_addr(p)
            case R.GET_VRING_BASE:
                st = _state(p)
                return m.Message.reply_to(msg, self._get_vring_base(st.index))
            case R.SET_VRING_KICK | R.SET_VRING_CALL | R.SET_VRING_ERR:
                assert isinstance(p, m.VringFile)
                self._set_vring_fd(req, p, msg.fds)
            case R.SET_VRING_ENABLE:
                self._set_vring_enable(_state(p))
            case R.GET_CONFIG:
                assert isinstance(p, m.ConfigSpace)
                self._require(m.ProtocolFeature.CONFIG, msg)
                data = self.device.get_config(p.offset, len(p.data))
                return m.Message.reply_to(msg, m.ConfigSpace(p.offset, p.flags, data))
            case R.SET_CONFIG:
                assert isinstance(p, m.ConfigSpace)
                self._require(m.ProtocolFeature.CONFIG, msg)
                self.device.set_config(p.offset, p.data)
            case R.SET_STATUS:
                assert isinstance(p, m.Status)
                self._require(m.ProtocolFeature.STATUS, msg)
                self._set_status(p.value)
            case R.GET_STATUS:
                self._require(m.ProtocolFeature.STATUS, msg)
                return m.Message.reply_to(msg, m.Status(self.device.get_status() & 0xFF))
            case R.SET_BACKEND_REQ_FD:
                self._set_backend_req_fd(msg)
            case R.SET_LOG_BASE:
                self._set_log_base(msg)
                return m.Message.reply_to(msg, m.U64(0))
            case R.SET_LOG_FD:
                if not self.has_protocol(m.ProtocolFeature.LOG_SHMFD):
                    self._close_fds(msg.fds)
                    raise SessionError(f"{msg.name} needs protocol feature LOG_SHMFD, not negotiated")
                self._shadow.set_log_event(msg.fds[0])
            case R.SEND_RARP:
                self._require(m.ProtocolFeature.RARP, msg)
                mac = m.rarp_mac(_u64(p))
                self.stats.rarp.append(mac)
                log.info("%s: SEND_RARP for %s received; the device cannot announce it (no GUEST_ANNOUNCE "
                         "without its control queue), the guest's own traffic updates the switches", self.name, mac)
            case _:
                self._close_fds(msg.fds)
                raise SessionError(f"{msg.name} is not supported by this backend")
        return None

    def _require(self, feature: m.ProtocolFeature, msg: m.Message) -> None:
        if not self.has_protocol(feature):
            raise SessionError(f"{msg.name} needs protocol feature {feature.name}, not negotiated")

    # --- features and status ----------------------------------------------------------------

    def _set_features(self, value: int) -> None:
        extra = value & ~self.offered_features()
        if extra:
            names = ", ".join(str(b) for b in range(64) if extra >> b & 1)
            raise SessionError(f"features {extra:#x} (bits {names}) were not offered: the device lacks them "
                               f"(offered {self.offered_features():#x})")
        if has(value, F.RING_PACKED) and value & LOG_ALL and device_logging(self.device) is None:
            raise SessionError(f"features {value:#x}: packed rings with dirty logging are not supported on this "
                               "device (it keeps no dirty log of its own, and the backend's used-ring relay is split)")
        if has(value, F.RING_PACKED) and value & 1 << NetF.MQ:
            raise SessionError(f"features {value:#x}: packed rings with multiqueue are not supported (the "
                               "backend's control queue is split)")
        wanted = value & ~(1 << m.VHOST_USER_F_PROTOCOL_FEATURES) & ~LOG_ALL
        device_features = wanted | (self.device.get_device_features() & BACKEND_FEATURES)
        if has(wanted, NetF.MQ):
            device_features |= 1 << NetF.CTRL_VQ  # the backend's own control queue sets the pairs
        status = self.device.get_status()
        if status & DeviceStatus.FEATURES_OK and self.device.get_driver_features() != device_features:
            if any(r.pushed for r in self.rings.values()):
                raise SessionError(f"features {value:#x} differ from those already negotiated "
                                   f"({self.features:#x}) while rings run on the device")
            self._renegotiate(device_features)
        elif not status & DeviceStatus.FEATURES_OK:
            self._negotiate(device_features)
        if bool(value & LOG_ALL) != self.logging_on:
            self._switch_logging(bool(value & LOG_ALL))
        self.features = value

    def _renegotiate(self, device_features: int) -> None:
        """New features once every ring has stopped (GET_VRING_BASE), without a reset message: DPDK's virtio_user
        does so when its port is configured again with other offloads (lib/vhost accepts it while the device does not
        run). The device is reset and negotiates again; the rings keep what the frontend said of them (it sends their
        addresses and kicks again before DRIVER_OK, but not their call eventfds)."""
        log.info("%s: features change with every ring stopped: resetting the device to negotiate %#x", self.name,
                 device_features)
        self.device.reset()
        self._shadow.stop_all(self.table)
        self._close_cvq()
        self._status = 0
        self._negotiate(device_features)

    def _negotiate(self, device_features: int) -> None:
        cur = self.device.get_status()  # SET_STATUS may already have set ACKNOWLEDGE and DRIVER
        for step in (DeviceStatus.ACKNOWLEDGE, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER):
            if step & ~cur:
                self.device.set_status(cur | step)
                cur |= step
        self.device.set_driver_features(device_features)
        self.device.set_status(_NEGOTIATED)  # raises VdpaError if FEATURES_OK does not stick

    def _set_status(self, status: int) -> None:
        if status == 0:
            self._reset()
            return
        cur = self.device.get_status()
        if status & DeviceStatus.FEATURES_OK and not cur & DeviceStatus.FEATURES_OK:
            raise SessionError(f"status {status:#x} sets FEATURES_OK before SET_FEATURES")
        target = status | (cur & _NEGOTIATED)
        starting = bool(status & DeviceStatus.DRIVER_OK and not cur & DeviceStatus.DRIVER_OK)
        if starting:
            self._check_ready_to_run()
            going = [(i, r) for i, r in sorted(self.rings.items()) if r.enabled and not r.pushed]
            states = [self._resume_state(i, r) for i, r in going]  # refuse before any ring reaches the device
            for (index, ring), state in zip(going, states, strict=True):
                ring.state = state
                self._push_ring(index, ring)
            self._setup_cvq()
            self.events.bind_config_call()
        if target != cur:
            self.device.set_status(target)
        self._status = status
        if starting:
            self._sync_pairs()

    def _check_ready_to_run(self) -> None:
        if self.table is None:
            raise SessionError("DRIVER_OK without a memory table")

    def _reset(self) -> None:
        stopped: dict[int, tuple[bool, VqState]] = {}
        for index, ring in sorted(self.rings.items()):
            if not ring.pushed:
                continue
            try:  # (the last ring stopped may reset the device already: the rings after it are not pushed)
                stopped[index] = (ring.packed, self._stopped_state(index, ring))
            except (VdpaError, PciError, SessionError) as exc:
                log.warning("%s: ring %d: where it stopped at the reset is unknown: %s", self.name, index, exc)
        self.device.reset()
        self._shadow.stop_all(self.table)
        self._close_cvq()
        for ring in self.rings.values():
            self._close_fds(list(ring.fds()))
        self.rings.clear()
        self._stopped_at_reset = stopped
        self.features = 0
        self._status = 0
        if self.table is not None:  # the device stays mapped; the table is kept for the next start
            log.info("%s: device reset, memory table kept", self.name)

    # --- memory -----------------------------------------------------------------------------

    def _set_mem_table(self, msg: m.Message) -> None:
        p = msg.payload
        if not isinstance(p, m.MemoryTable):
            self._close_fds(msg.fds)
            raise SessionError("postcopy SET_MEM_TABLE acknowledgement without postcopy")
        try:
            new = MemoryTable.from_wire(p.regions, msg.fds)
        except MemoryTableError as exc:
            raise SessionError(f"memory table rejected: {exc}") from None
        try:
            missing = [(i, a, s) for i, ring in self.rings.items() for a, s in ring.ranges()
                       if not new.covers([(a, s)], AddressSpace.GPA)]
            if missing:
                i, a, s = missing[0]
                raise SessionError(f"new memory table no longer covers ring {i} at gpa [{a:#x}, {a + s:#x})")
            if any(new.overlaps(*shadow_range(i)) for i in self._shadow.relays):
                raise SessionError("new memory table overlaps the backend's shadow used rings")
            if (dlog := self._shadow.device_log) is not None and new.overlaps(dlog.iova, dlog.size):
                raise SessionError(f"new memory table overlaps the device's dirty log at iova {dlog.iova:#x}")
            if self._cvq is not None and new.overlaps(*self._cvq.range()):
                raise SessionError(f"new memory table overlaps the backend's control queue at iova "
                                   f"{self._cvq.range()[0]:#x}")
            if self.table is None:
                new.program(self.device)
            else:
                change = self.table.replace(new, self.device)
                log.info("%s: memory table replaced: %d unmapped, %d mapped, %d kept", self.name,
                         len(change.unmapped), len(change.mapped), len(change.kept))
        except BaseException:
            new.close()
            raise
        self.table = new
        self.stats.mem_tables += 1
        self._check_log_covers()

    def _translate(self, uva: int, size: int, what: str) -> int:
        if self.table is None:
            raise SessionError(f"{what} address {uva:#x} given before SET_MEM_TABLE")
        try:
            return self.table.uva_to_gpa(uva, size)
        except MemoryTableError as exc:
            raise SessionError(f"{what} outside the memory table: {exc}") from None

    # --- rings ------------------------------------------------------------------------------

    def _ring(self, index: int) -> RingState:
        count = self._data_vq_count()
        if not 0 <= index < count:
            extra = " and a control queue owned by the backend" if count < self.device.get_vq_count() else ""
            raise SessionError(f"ring {index} does not exist (device has {count} data rings{extra})")
        return self.rings.setdefault(index, RingState())

    def _set_vring_num(self, st: m.VringState) -> None:
        ring = self._ring(st.index)
        limit = self.device.get_vq_num_max(st.index)
        if st.num > limit:
            raise SessionError(f"ring {st.index}: size {st.num} exceeds the device's maximum queue size {limit}")
        if self.packed:
            if not is_valid_packed_size(st.num):
                raise SessionError(f"ring {st.index}: packed ring size {st.num} is not in 1..{limit}")
        elif not is_valid_split_size(st.num):
            raise SessionError(f"ring {st.index}: size {st.num} is not a power of two in 1..{limit}")
        if ring.pushed:
            raise SessionError(f"ring {st.index}: size change while the ring runs")
        ring.num = st.num
        ring.packed = self.packed

    @property
    def packed(self) -> bool:
        """The frontend accepted VIRTIO_F_RING_PACKED: every ring of the device is packed."""
        return has(self.features, F.RING_PACKED)

    def _set_vring_base(self, st: m.VringState) -> None:
        ring = self._ring(st.index)
        if self.packed:
            state = packed_state(st)
            for name, idx in (("avail", state.avail_idx), ("used", state.used_idx)):
                if ring.num and idx >= ring.num:
                    raise SessionError(f"ring {st.index}: packed base {st.num:#x}: {name} index {idx} is outside "
                                       f"the ring of {ring.num}")
        elif st.num > 0xFFFF:
            raise SessionError(f"ring {st.index}: split ring base {st.num:#x} does not fit 16 bits")
        else:
            state = VqState(avail_idx=st.num)
        if ring.pushed:
            raise SessionError(f"ring {st.index}: SET_VRING_BASE while the ring runs")
        try:
            self.device.set_vq_state(st.index, state)
        except NotSupported as exc:
            raise SessionError(f"ring {st.index}: cannot resume at base {st.num:#x}: {exc}") from None
        ring.state = state
        ring.stopped = False

    def _set_vring_addr(self, a: m.VringAddr) -> None:
        ring = self._ring(a.index)
        if a.log_used and not self.logging_on:
            raise SessionError(f"ring {a.index}: used-ring logging (VHOST_VRING_F_LOG) requested while "
                               "VHOST_F_LOG_ALL is off")
        if not ring.num:
            raise SessionError(f"ring {a.index}: SET_VRING_ADDR before SET_VRING_NUM")
        if ring.packed != self.packed and ring.pushed:
            raise SessionError(f"ring {a.index}: ring layout change while the ring runs")
        ring.packed = self.packed
        if ring.packed:
            desc = self._translate(a.desc, PackedLayout(ring.num).desc_bytes, f"ring {a.index} descriptor ring")
            avail = self._translate(a.avail, EVENT_SIZE, f"ring {a.index} driver event suppression area")
            used = self._translate(a.used, EVENT_SIZE, f"ring {a.index} device event suppression area")
        else:
            lay = SplitLayout(ring.num)
            desc = self._translate(a.desc, lay.desc_bytes, f"ring {a.index} descriptor table")
            avail = self._translate(a.avail, lay.avail_bytes, f"ring {a.index} available ring")
            used = self._translate(a.used, lay.used_bytes, f"ring {a.index} used ring")
        if ring.pushed and (desc, avail, used) != (ring.desc, ring.avail, ring.used):
            # QEMU resends a running ring's addresses to switch VHOST_VRING_F_LOG; only that may change
            raise SessionError(f"ring {a.index}: address change while the ring runs")
        ring.desc, ring.avail, ring.used = desc, avail, used
        ring.log_used, ring.log_addr = a.log_used, a.log
        self._alias_used_log(a.index, ring)
        relay = self._shadow.relays.get(a.index)
        if relay is not None:
            relay.log_used = self._used_log_addr(ring)

    def _set_vring_fd(self, request: m.FrontendRequest, f: m.VringFile, fds: tuple[int, ...]) -> None:
        try:
            ring = self._ring(f.index)
        except SessionError:
            self._close_fds(fds)
            raise
        fd = fds[0] if fds else None
        R = m.FrontendRequest
        if fd is not None and (problem := not_an_eventfd(fd)) is not None:
            self._close_fds(fds)
            raise SessionError(f"ring {f.index}: {request.name} fd is {problem}")
        if request is R.SET_VRING_KICK:
            if fd is None:
                raise SessionError(f"ring {f.index}: polling mode (kick without fd) is not supported")
            old, ring.kick = ring.kick, fd
            if (relay := self._shadow.relays.get(f.index)) is not None:
                relay.kick = fd
            if ring.pushed:
                self.device.set_vq_kick(f.index, fd)
            if not self.has_protocol_features_bit():
                ring.enabled = True  # without protocol features a ring starts when its kick arrives
                self._start_if_running(f.index, ring)
        elif request is R.SET_VRING_CALL:
            old, ring.call = ring.call, fd
            relay = self._shadow.relays.get(f.index)
            if relay is not None:
                relay.call = fd  # the device signals the relay, which signals the frontend
            elif ring.pushed:
                self.device.set_vq_call(f.index, fd)
        else:
            old, ring.err = ring.err, fd  # kept for the frontend's sake; the device never reports errors here
        if old is not None and old != fd:
            self._close_fds([old])

    def has_protocol_features_bit(self) -> bool:
        return bool(self.features & (1 << m.VHOST_USER_F_PROTOCOL_FEATURES))

    def _set_vring_enable(self, st: m.VringState) -> None:
        ring = self._ring(st.index)
        if st.num not in (0, 1):
            raise SessionError(f"ring {st.index}: enable value {st.num} is not 0 or 1")
        ring.enabled = bool(st.num)
        if ring.enabled:
            self._start_if_running(st.index, ring)
        elif ring.pushed:
            log.debug("%s: ring %d disabled; the device queue keeps running (cannot pause one queue)",
                      self.name, st.index)
        if self.device.get_status() & DeviceStatus.DRIVER_OK:
            self._sync_pairs()

    def _start_if_running(self, index: int, ring: RingState) -> None:
        """Hand an enabled ring to the device when it runs (or, without STATUS, start it)."""
        status = self.device.get_status()
        if ring.pushed or not status & DeviceStatus.FEATURES_OK:
            return
        if status & DeviceStatus.DRIVER_OK:
            ring.state = self._resume_state(index, ring)
            self._push_ring(index, ring)
        elif not self.has_protocol(m.ProtocolFeature.STATUS):
            self._check_ready_to_run()
            ring.state = self._resume_state(index, ring)
            self._push_ring(index, ring)
            self._setup_cvq()
            self.events.bind_config_call()
            self.device.set_status(_NEGOTIATED | DeviceStatus.DRIVER_OK)

    def _push_ring(self, index: int, ring: RingState) -> None:
        if ring.desc is None or ring.avail is None or ring.used is None:
            raise SessionError(f"ring {index} enabled without addresses")
        if ring.kick is None:
            raise SessionError(f"ring {index} enabled without a kick eventfd")
        if self.table is None:
            raise SessionError(f"ring {index} enabled without a memory table")
        if not self.table.covers(ring.ranges(), AddressSpace.GPA):
            raise SessionError(f"ring {index} lies outside the current memory table")
        if ring.packed and max(ring.state.avail_idx, ring.state.used_idx) >= ring.num:
            raise SessionError(f"ring {index}: packed base {ring.state} lies outside the ring of {ring.num} (the size "
                               "came after the base)")
        d = self.device
        if (dlog := self._shadow.device_log) is not None and not dlog.running():
            dlog.start()  # a device reset since logging began cleared the block
        relay = self._new_relay(index, ring) if self.logging_on and dlog is None else None
        try:
            d.set_vq_num(index, ring.num)
            d.set_vq_address(index, ring.desc, ring.avail, ring.used if relay is None else relay.iova)
            d.set_vq_state(index, ring.state)
            d.set_vq_kick(index, ring.kick)
            d.set_vq_call(index, ring.call if relay is None else relay.device_call)
            d.set_vq_ready(index, True)
        except BaseException:
            if relay is not None:
                self._shadow.stop(index, None)
            raise
        ring.pushed = True

    def _resume_state(self, index: int, ring: RingState) -> VqState:
        """The state a ring the frontend starts goes live at: its base, except a split ring's base 0 on a used ring
        that has moved on (a frontend resuming turned rings on a restarted backend), which starts at the used idx.
        (A packed ring keeps no used index in memory to resume from: its base is taken as given.)"""
        if (ring.packed or ring.state.avail_idx != 0 or self.table is None or not ring.ranges()
                or not self.table.covers(ring.ranges(), AddressSpace.GPA)):
            return ring.state  # an explicit base is the frontend's word; _push_ring refuses a ring it cannot reach
        used_idx = self._read_used_idx(ring)
        if used_idx == 0:
            return ring.state
        try:
            self.device.set_vq_state(index, VqState(avail_idx=used_idx))
        except NotSupported as exc:
            raise SessionError(
                f"ring {index}: the frontend resumes a ring whose used idx is {used_idx} with SET_VRING_BASE 0 (as "
                "DPDK's virtio_user does after reconnecting to a restarted backend); this device can only start a "
                f"queue at 0 ({exc}), so resuming needs a device with a vq-state register (a vendor quirk)") from None
        log.warning("%s: ring %d: SET_VRING_BASE 0 but the used idx is %d: resuming at %d (buffers made available "
                    "after it are taken again)", self.name, index, used_idx, used_idx)
        return VqState(avail_idx=used_idx)

    def _read_used_idx(self, ring: RingState) -> int:
        """The used ring's idx in the frontend's memory."""
        assert ring.used is not None and self.table is not None
        view = self.table.gpa_view(ring.used + 2, 2)
        try:
            return int.from_bytes(view, "little")
        finally:
            view.release()

    def _get_vring_base(self, index: int) -> m.VringState:
        kept = self.rings.get(index)
        if (kept is None or not kept.num) and index in self._stopped_at_reset:  # stopped by the reset, not set up since
            packed, state = self._stopped_at_reset.pop(index)
            return packed_num(index, state) if packed else m.VringState(index, state.avail_idx)
        ring = self._ring(index)
        state = self._stopped_state(index, ring)
        if ring.packed or self.packed:  # (a ring of a packed session never set up: its start, packed)
            return packed_num(index, state)
        return m.VringState(index, state.avail_idx)

    def _stopped_state(self, index: int, ring: RingState) -> VqState:
        """Stop a running ring and say where it stopped (a ring not running: where it would start)."""
        if not ring.pushed:
            return ring.state
        try:
            state = self.device.get_vq_state(index)
            self._stop_ring(index, ring)
            return state
        except NotSupported:
            pass
        # The device cannot report its state: stop it, then read what it left in the ring (after the relay, when
        # logging, put the last entries there and in the log).
        self._stop_ring(index, ring)
        if ring.packed:
            assert ring.desc is not None and self.table is not None
            view = self.table.gpa_view(ring.desc, PackedLayout(ring.num).desc_bytes)
            try:
                off, wrap = packed_ring_position(view, ring.num)
            finally:
                view.release()
            log.info("%s: ring %d stopped at slot %d wrap %d, read from the ring's AVAIL bits (device cannot report "
                     "its state)", self.name, index, off, wrap)
            return VqState(avail_idx=off, avail_wrap=wrap, used_idx=off, used_wrap=wrap)
        base = self._read_used_idx(ring)
        log.info("%s: ring %d base %d read from the used ring (device cannot report last_avail_idx)",
                 self.name, index, base)
        return VqState(avail_idx=base)

    def _stop_ring(self, index: int, ring: RingState) -> None:
        if has(self.device.get_driver_features(), F.RING_RESET):
            self.device.set_vq_ready(index, False)
        elif all(r.stopped or not r.pushed for i, r in self.rings.items() if i != index):
            log.info("%s: last running ring stopped without RING_RESET: resetting the device", self.name)
            self.device.reset()
            self._shadow.stop_all(self.table)
            self._close_cvq()
            for r in self.rings.values():
                r.pushed = False
        self._shadow.stop(index, self.table)  # the device is done with the ring: its last used entries are logged
        ring.pushed = False
        ring.stopped = True
        ring.state = VqState()

    # --- the device's control queue (multiqueue) ---------------------------------------------

    def _setup_cvq(self) -> None:
        """Before DRIVER_OK: program the backend's control queue when MQ was negotiated."""
        if self._cvq is not None or not has(self.device.get_driver_features(), NetF.MQ):
            return
        cvq = ShadowControlQueue(self.device, self.device.get_vq_count() - 1)
        iova, size = cvq.range()
        if self.table is not None and self.table.overlaps(iova, size):
            cvq.close()
            raise SessionError(f"memory table overlaps the backend's control queue at iova {iova:#x}")
        try:
            cvq.setup()
        except BaseException:
            cvq.close()
            raise
        self._cvq = cvq
        self._pairs_set = 1

    def _sync_pairs(self) -> None:
        """Tell the device how many queue pairs to use: the leading pairs whose two rings are enabled."""
        if self._cvq is None:
            return
        pairs = 0
        while all(self.rings.get(2 * pairs + k, RingState()).enabled for k in (0, 1)):
            pairs += 1
        pairs = max(pairs, 1)
        if pairs == self._pairs_set:
            return
        try:
            self._cvq.set_queue_pairs(pairs)
        except ControlQueueError as exc:
            raise SessionError(f"queue pairs {self._pairs_set} -> {pairs}: {exc}") from None
        log.info("%s: device uses %d queue pair(s)", self.name, pairs)
        self._pairs_set = pairs

    def _close_cvq(self) -> None:
        if self._cvq is not None:
            self._cvq.close()
            self._cvq = None
        self._pairs_set = 1

    # --- dirty logging (backend.vhost_user.dirty_log, log_shadow) -------------------------------

    def _set_log_base(self, msg: m.Message) -> None:
        p = msg.payload
        if not isinstance(p, m.LogDescription) or not self.has_protocol(m.ProtocolFeature.LOG_SHMFD):
            self._close_fds(msg.fds)
            raise SessionError("SET_LOG_BASE without LOG_SHMFD (a log in the frontend's address space) "
                               "is not supported: negotiate LOG_SHMFD and pass the log's fd")
        try:
            new = DirtyLog(msg.fds[0], p.mmap_size, p.mmap_offset)
        except DirtyLogError as exc:
            raise SessionError(f"dirty log not mapped: {exc.reason}") from None
        self._shadow.set_log(new, self.table)
        log.info("%s: dirty log of %d bytes mapped (covers gpa [0, %#x))", self.name, new.size, new.limit)
        self._check_log_covers()

    def _check_log_covers(self) -> None:
        """Warn when the memory table reaches past the log (writes there become reported errors)."""
        if self.table is not None and (text := self._shadow.uncovered(self.table)) is not None:
            self._report(text, logging.WARNING)

    def _report(self, text: str, level: int = logging.ERROR) -> None:
        self.stats.errors.append(f"{self.name}: {text}")
        log.log(level, "%s: %s", self.name, text)

    def _switch_logging(self, on: bool) -> None:
        """LOG_ALL toggled: the device logs its own writes from now on (or no more), where it can; else move
        running rings to the relay (on) or back to the direct path (off)."""
        if on and self._shadow.log is None:
            raise SessionError("VHOST_F_LOG_ALL set before SET_LOG_BASE gave a log")
        if (device := device_logging(self.device)) is not None:
            if on:
                self._start_device_log(device)
            else:
                self._shadow.stop_device_log()
            self.features = (self.features & ~LOG_ALL) | (LOG_ALL if on else 0)
            log.info("%s: dirty logging %s, by the device itself (rings keep running)", self.name,
                     "on" if on else "off")
            return
        if on and self.packed:
            raise SessionError("VHOST_F_LOG_ALL with packed rings: the used-ring relay is split only")
        running = sorted(i for i, r in self.rings.items() if r.pushed)
        for i in running:
            try:
                self.device.get_vq_state(i)
            except NotSupported as exc:
                raise SessionError(f"ring {i} runs and cannot change paths at the same ring state ({exc}); dirty "
                                   "logging can be switched on this device only before the rings start") from None
        self.features = (self.features & ~LOG_ALL) | (LOG_ALL if on else 0)  # _push_ring reads it
        for i in running:
            ring = self.rings[i]
            state = self.device.get_vq_state(i)
            self._stop_ring(i, ring)
            ring.state, ring.stopped = state, False
            self._push_ring(i, ring)
        log.info("%s: dirty logging %s (%d running ring(s) moved)", self.name, "on" if on else "off", len(running))

    def _start_device_log(self, device: DeviceDirtyLog) -> None:
        assert self._shadow.log is not None
        iova, size = device_log_range(self._shadow.log.pages)
        if self.table is not None and self.table.overlaps(iova, size):
            raise SessionError(f"memory table overlaps the device's dirty log at iova {iova:#x}")
        try:
            self._shadow.start_device_log(device)
        except DeviceLogError as exc:
            raise SessionError(exc.reason) from None
        for index, ring in self.rings.items():
            self._alias_used_log(index, ring)

    def _alias_used_log(self, index: int, ring: RingState) -> None:
        """A used ring logged at a log_guest_addr other than its own: the device logs the ring's own pages, and
        the fold marks the log address's as well."""
        dlog = self._shadow.device_log
        if dlog is None or ring.used is None:
            return
        dlog.aliases.pop(index, None)
        if ring.log_used and ring.log_addr != ring.used and not ring.packed:  # packed: no used ring of its own
            dlog.aliases[index] = (ring.used, ring.log_addr, SplitLayout(ring.num).used_bytes)

    def _used_log_addr(self, ring: RingState) -> int:
        """Where writes to the frontend's used ring are logged: log_guest_addr with VHOST_VRING_F_LOG."""
        assert ring.used is not None
        return ring.log_addr if ring.log_used else ring.used

    def _new_relay(self, index: int, ring: RingState) -> UsedRelay:
        assert ring.desc is not None and ring.avail is not None and ring.used is not None
        assert self.table is not None
        iova, size = shadow_range(index)
        if self.table.overlaps(iova, size):
            raise SessionError(f"memory table overlaps ring {index}'s shadow used ring at iova {iova:#x}")
        features = self.device.get_driver_features()
        return self._shadow.start(index, self.table, num=ring.num, desc=ring.desc, avail=ring.avail, used=ring.used,
                                  log_used=self._used_log_addr(ring), call=ring.call, kick=ring.kick,
                                  indirect=has(features, F.INDIRECT_DESC), event_idx=has(features, F.EVENT_IDX))

    # --- events from the device (backend.vhost_user.device_events) ---------------------------

    def _set_backend_req_fd(self, msg: m.Message) -> None:
        if not self.has_protocol(m.ProtocolFeature.BACKEND_REQ):
            self._close_fds(msg.fds)
            raise SessionError(f"{msg.name} needs protocol feature BACKEND_REQ, not negotiated")
        try:
            self.events.set_backend_channel(msg.fds[0], reply_ack=self.has_protocol(m.ProtocolFeature.REPLY_ACK))
        except BackendChannelError as exc:
            raise SessionError(str(exc)) from None

    @property
    def device_lost(self) -> str | None:
        """Why the device's connection ended, once it did."""
        return self.events.lost

    def watched(self) -> list[tuple[int, int]]:
        """(fd, poll events) the server waits on beside the frontend's socket; :meth:`service` handles them."""
        if self._closed:
            return []
        return self.events.watched() + [(fd, select.POLLIN) for fd in self._shadow.watched()]

    def service(self, fd: int) -> None:
        """One of :meth:`watched` is ready. Raises :class:`SessionClosed` when the device is gone."""
        if self._shadow.service(fd, self.table):
            return
        try:
            self.events.service(fd)
        except DeviceLost as exc:
            raise SessionClosed(f"device lost: {exc.reason}") from None

    # --- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Give back everything the session took: stop the device, close the backend's control queue and
        every ring's eventfds, unmap and close the memory table, then close the device (the session owns
        it). Each step runs even when an earlier one fails; after it the session holds no fd, mapping or thread."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.device_lost is None:  # a lost device cannot be reset; its fds are closed below
                self.device.reset()
        except (VdpaError, PciError) as exc:
            log.warning("%s: device reset at close failed: %s", self.name, exc)
        finally:
            try:
                # Only once the reset unbound it: a running device may raise its configuration interrupt until
                # then (a DMA fault setting NEEDS_RESET), and must not write to a closed, or reused, eventfd.
                self.events.close()
                self._shadow.close(self.table)
                self._close_cvq()
            finally:
                for ring in self.rings.values():
                    self._close_fds(list(ring.fds()))
                self.rings.clear()
                try:
                    if self.table is not None:
                        self.table.close(unmap=self.device_lost is None)
                except MemoryTableError as exc:
                    log.warning("%s: memory table close: %s", self.name, exc)
                finally:
                    self.table = None
                    self._close_device()

    def _close_device(self) -> None:
        try:
            self.device.close()
        except (VdpaError, PciError, OSError) as exc:  # closed all the same: the driver's close ends in finally
            if self.device_lost is None:
                log.warning("%s: device close: %s", self.name, exc)

    @staticmethod
    def _close_fds(fds: Iterable[int]) -> None:
        close_fds(set(fds))


def _u64(p: m.Payload) -> int:
    assert isinstance(p, m.U64)
    return p.value


def _is_resume_stop(msg: m.Message) -> bool:
    """A ring stop that a frontend resuming on a restarted backend sends first: SET_VRING_ENABLE 0, GET_VRING_BASE."""
    p = msg.payload
    return (msg.request in _RESUME_STOPS and isinstance(p, m.VringState)
            and (msg.request is m.FrontendRequest.GET_VRING_BASE or p.num == 0))


def _state(p: m.Payload) -> m.VringState:
    assert isinstance(p, m.VringState)
    return p

