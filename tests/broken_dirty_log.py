"""A seeded bug in the device-side dirty page log of the behavioral model (one override), which the dirty-log
property of tests/test_dirty_log.py must catch: the same bug as the RTL's ``VNET_BUG_LOG_SKIP_USED``."""

from __future__ import annotations

from backend.virtio.split_ring import SplitLayout
from models.virtio_net.dirty_log_block import DirtyLogNetDevice


class UsedRingNotLogged(DirtyLogNetDevice):
    """Writes to a split ring's used ring (elements, used idx) are not logged; buffers still are."""

    def _log_write(self, iova: int, size: int) -> None:
        if any(q.enabled and q.device <= iova < q.device + SplitLayout(q.size).used_bytes for q in self.queues):
            return
        super()._log_write(iova, size)
