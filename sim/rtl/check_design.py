"""``vdpa-bench design SPEC``: a description checked against its design, without running a check.

Reads the description (schema and semantics), has Verilator elaborate the design with the options, checks
every port the description names, prints which port plays which role, and with ``--build`` generates the
bridge and builds the library the ``rtl:`` target loads. Exit 0 when all of it holds, 2 with the error.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table


def cmd_design(args: argparse.Namespace) -> int:
    from models.rtl.targets import RtlOptions, build_variant
    from sim.rtl.build import RtlBuildError
    from sim.rtl.description import DescriptionError
    from sim.rtl.generate import check_ports, read_ports, status_fields, stream_lanes

    console = Console()
    spec = args.spec.removeprefix("rtl:")
    try:
        opts = RtlOptions(spec)
        variant = opts.variant
        ports = read_ports(variant)
        zero = check_ports(variant, ports)
    except (ValueError, DescriptionError, RtlBuildError) as exc:
        console.print(f"[red]vdpa-bench design: {exc}[/]", highlight=False)
        return 2
    d = opts.description
    console.print(f"{d.path}: design {d.name!r}, top {d.top}, {len(d.sources)} sources; {variant.num_queues} queues, "
                  f"{variant.msix_vectors} MSI-X vectors ({'in the design' if d.msix_in_design else 'platform'})",
                  highlight=False)
    table = Table(title="bus roles")
    for col in ("role", "ports", "notes"):
        table.add_column(col)
    table.add_row("clock / reset", f"{d.clock} / {d.reset}", f"reset active-{'low' if d.reset_active_low else 'high'}, "
                  f"{d.reset_cycles} cycles")
    for i, s in enumerate(d.slaves):
        table.add_row(f"slave {i} {s.name}", f"{s.prefix}*", f"{s.protocol}, BAR {s.bar} [{s.offset:#x}, "
                      f"+{s.size:#x})")
    for m in variant.dma:
        table.add_row(f"dma {m.name}", f"{m.prefix}*", f"{m.data_width}-bit data, {m.addr_width}-bit address, ID "
                      f"{m.id_width}, {m.outstanding} outstanding")
    if d.stream_rx is not None and d.stream_tx is not None:
        lanes = stream_lanes(variant)
        width = ports[d.stream_rx + "tdata"].width // lanes
        if d.stream_dest:
            note = f"{width}-bit data, tdest: queue pair"
        elif d.stream_lanes == "per-pair":
            note = (f"{lanes} lanes of {width}-bit data, one per queue pair: lane i is pair i (tdata "
                    f"[{width}*i +: {width}], tvalid/tready/tlast bit i)")
        else:
            note = f"{width}-bit data, no tdest"
        table.add_row("stream", f"{d.stream_rx}* / {d.stream_tx}*", note)
    irq = d.interrupts
    table.add_row("interrupts", ", ".join(str(v) for k, v in irq.items() if k != "style"), str(irq["style"]))
    table.add_row("idle", d.idle_port or f"{len(d.idle_signals)} signals", "")
    table.add_row("status", ", ".join(status_fields(variant)[5:]) or "-", "")
    if zero:
        table.add_row("driven 0", ", ".join(zero), "inputs no role names")
    console.print(table)
    if args.build:
        t0 = time.perf_counter()
        try:
            built = build_variant(opts)
        except (ValueError, RtlBuildError) as exc:
            console.print(f"[red]vdpa-bench design: {exc}[/]", highlight=False)
            return 2
        console.print(f"built {built.library} ({'now' if built.fresh else 'cached'}, {time.perf_counter() - t0:.1f} s)",
                      highlight=False)
    console.print(f"ports match the description; run the suite with: vdpa-bench run --target rtl:{spec}",
                  highlight=False)
    return 0
