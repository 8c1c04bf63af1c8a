"""The vector field of a queue that does not exist (4.1.4.3, 4.1.5.1.2).

queue_select may name a queue beyond num_queues; queue_size then reads 0 (PCI-DEV-25, :mod:`test_common_cfg`).
No event of such a queue can be mapped to a vector, so its queue_msix_vector reads NO_VECTOR, before and after a
driver tried to map it (PCI-DEV-58), and the reads leave the device working: the queues that exist still read
their own mapping.
"""

from __future__ import annotations

import pytest

from backend.virtio.pci_regs import NO_VECTOR, CommonCfg
from testbenches.conformance.harness import Bench
from testbenches.conformance.plugin import Verdict


@pytest.mark.req("PCI-DEV-58")
def test_absent_queue_has_no_vector(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    if t.msix_table_size() == 0:
        verdict.not_applicable("PCI-DEV-58", "the function has no MSI-X capability")
        return
    nq = t.num_queues()
    seen: dict[int, tuple[int, int]] = {}
    for q in (nq, nq + 1, 0x7FFF, 0xFFFF):
        t.select_queue(q)
        before = t.read_common(CommonCfg.QUEUE_MSIX_VECTOR)
        t.write_common(CommonCfg.QUEUE_MSIX_VECTOR, 0)
        seen[q] = (before, t.read_common(CommonCfg.QUEUE_MSIX_VECTOR))
    t.select_queue(0)
    t.write_common(CommonCfg.QUEUE_MSIX_VECTOR, 0)
    own = t.read_common(CommonCfg.QUEUE_MSIX_VECTOR)
    wrong = {q: v for q, v in seen.items() if v != (NO_VECTOR, NO_VECTOR)}
    verdict.check("PCI-DEV-58", not wrong and own == 0,
                  f"num_queues {nq}: queue_msix_vector of absent queues (read, then read after writing 0) "
                  f"{ {q: (hex(a), hex(b)) for q, (a, b) in seen.items()} } (NO_VECTOR expected); queue 0 mapped to "
                  f"vector 0 reads {own:#x}")
