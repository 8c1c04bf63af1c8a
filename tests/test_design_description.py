"""Design description files (sim/rtl/description.py, generate.py): a wrong description is one clear error
before any check runs, naming the file and what is wrong; the expressions are integers and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.rtl import RTL_DIR
from models.rtl.targets import DESIGNS, RtlOptions, build_variant, open_rtl
from sim.rtl.description import Description, DescriptionError
from sim.rtl.expressions import ExpressionError, evaluate, render
from sim.rtl.generate import check_ports, read_ports, render_bridge
from tests.rtl_build import require_rtl_build

PROJECT = RTL_DIR / "virtio_net.toml"


def variant_of(tmp_path: Path, old: str = "", new: str = "", name: str = "design.toml") -> Path:
    """The project's description with ``old`` replaced by ``new`` (sources made absolute), in tmp_path."""
    text = PROJECT.read_text()
    text = re.sub(r'"(\w+\.sv)"', lambda m: f'"{RTL_DIR / m.group(1)}"', text)
    text = text.replace('codes_from = "virtio_pkg.sv"', f'codes_from = "{RTL_DIR / "virtio_pkg.sv"}"')
    if old:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


# --- expressions -----------------------------------------------------------------------------------------

def test_expressions_are_integers_over_option_names() -> None:
    names = {"queues": 3, "mtu": 1500}
    assert evaluate("2 * queues + (queues > 1) + 1", names) == 8
    assert evaluate("max(2048, pow2ceil(mtu + 30))", names) == 2048
    assert evaluate("4 if queues > 2 else 2", names) == 4
    assert render("48'h{mac:012x}", {"mac": 0x020000000001}) == "48'h020000000001"
    assert render("16'd{mtu}", names) == "16'd1500"
    with pytest.raises(ExpressionError, match="unknown name 'pairs'"):
        evaluate("pairs * 2", names)
    for bad in ("__import__('os')", "queues.real", "[1][0]", "'a' * 3", "queues ** 99999"):
        with pytest.raises(ExpressionError):
            evaluate(bad, names)
    with pytest.raises(ExpressionError, match="division by zero"):
        evaluate("mtu // (queues - 3)", names)


# --- the file and the schema ------------------------------------------------------------------------------

def test_shipped_descriptions_load() -> None:
    for name, path in DESIGNS.items():
        if path.is_file():
            d = Description.load(path)
            assert d.path == path.resolve(), name


def test_schema_errors_name_the_key(tmp_path: Path) -> None:
    path = variant_of(tmp_path, "[clock]\nport = \"clk\"", "[clock]\nport = \"clk\"\nedge = \"rising\"")
    with pytest.raises(DescriptionError, match=r"clock: Additional properties are not allowed \('edge'"):
        Description.load(path)
    path = variant_of(tmp_path, "dest = true", 'lanes = "per-queue"')
    with pytest.raises(DescriptionError, match=r"stream.lanes: 'per-queue' is not one of \['single', 'per-pair'\]"):
        Description.load(path)
    path = variant_of(tmp_path, 'active = "low"', 'active = "negative"')
    with pytest.raises(DescriptionError, match=r"reset.active: 'negative' is not one of \['low', 'high'\]"):
        Description.load(path)
    path = variant_of(tmp_path, "schema = 1", "schema = 1\n[[[")
    with pytest.raises(DescriptionError, match="not valid TOML"):
        Description.load(path)
    with pytest.raises(DescriptionError, match="no such design description file"):
        Description.load(tmp_path / "absent.toml")


def test_semantic_errors(tmp_path: Path) -> None:
    cases = [
        (("vnet_buf.sv", "vnet_buff.sv"), "design.sources: '/.*/vnet_buff.sv' is not a file"),
        (("size = 0x8000", "size = 0x6000"), "not a power of two"),
        (("size = 0x4000\n", "size = 0x5000\n"), "the platform serves it, but slave 'regs' decodes"),
        (("offset = 0x3000\nlength", "offset = 0x5000\nlength"), "'notify'.*not inside one slave window"),
        (('style = "vector"', 'style = "msi-write"'), "in_design = false"),
        (('vectors = "2 * queues + (queues > 1) + 1"', 'vectors = "2 * queues + spare"'), "unknown name 'spare'"),
        (("dest = true", 'dest = true\nlanes = "per-pair"'), r"stream: dest = true with lanes = 'per-pair'.*no tdest"),
    ]
    for (old, new), message in cases:
        path = variant_of(tmp_path, old, new)
        with pytest.raises(DescriptionError, match=message):
            Description.load(path)


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option 'queue' .*known: queues"):
        RtlOptions(f"{variant_of(tmp_path)},queue=2")
    with pytest.raises(ValueError, match=r"qsize=300 must be .*a power of two"):
        RtlOptions("virtio-net,qsize=300")
    with pytest.raises(ValueError, match="mac='02:00' is not aa:bb"):
        RtlOptions("virtio-net,mac=02:00")
    with pytest.raises(ValueError, match="unknown design 'virtio-nett'"):
        RtlOptions("virtio-nett")
    assert RtlOptions("virtio-net,queues=2").num_queues == 5
    by_path = RtlOptions(f"{PROJECT},queues=2")
    assert by_path.variant.parameters == RtlOptions("virtio-net,queues=2").variant.parameters


# --- against the design (Verilator reads it; nothing is built) ---------------------------------------------

@pytest.fixture(scope="module")
def verilator() -> None:
    require_rtl_build("virtio-net")  # the toolchain (skips without it, fails in CI)


def test_a_missing_port_and_a_width_mismatch_are_one_error(tmp_path: Path, verilator: None) -> None:
    path = variant_of(tmp_path, 'prefix = "m_axi_"\ndata_width = "data_w"',
                      'prefix = "m_axi_"\ndata_width = 128')
    text = path.read_text().replace('[link]\nport = "link_up"', '[link]\nport = "link_ok"')
    path.write_text(text)
    opts = RtlOptions(str(path))
    with pytest.raises(DescriptionError) as err:
        check_ports(opts.variant, read_ports(opts.variant))
    message = str(err.value)
    assert "port 'm_axi_wdata' is 64 bits wide, the description says 128" in message
    assert "link: port 'link_ok' is missing from virtio_net_top" in message
    with pytest.raises(ValueError, match="does not match the design"):
        build_variant(opts)


def test_lane_vectors_are_checked_against_the_queue_pairs(tmp_path: Path, verilator: None) -> None:
    """``lanes = "per-pair"`` on the project's design (one port with tdest): with 2 pairs every handshake
    signal must be 2 bits, each named in the one error; with 1 pair the single port is one lane and fits."""
    path = variant_of(tmp_path, "dest = true", 'lanes = "per-pair"')
    opts = RtlOptions(f"{path},queues=2")
    with pytest.raises(DescriptionError) as err:
        check_ports(opts.variant, read_ports(opts.variant))
    message = " ".join(str(err.value).split())
    for port in ("s_axis_tvalid", "s_axis_tlast", "m_axis_tready", "m_axis_tvalid"):
        assert (f"stream {'rx' if port[0] == 's' else 'tx'} (2 lanes, one per queue pair): port '{port}' is 1 bits "
                f"wide, the description says 2") in message, message
    one = RtlOptions(f"{path},queues=1")
    assert "s_axis_tdest" in check_ports(one.variant, read_ports(one.variant))  # unnamed input: driven 0


def test_a_lane_width_that_does_not_divide(tmp_path: Path, verilator: None) -> None:
    """tdata of a per-pair port is lanes x W with W whole bytes: 3 lanes on a 64-bit port do not divide it."""
    path = variant_of(tmp_path, "dest = true", 'lanes = "per-pair"')
    text = path.read_text().replace('NUM_PAIRS = "{queues}"', 'NUM_PAIRS = "{min(queues, 2)}"')
    path.write_text(text)
    opts = RtlOptions(f"{path},queues=3")
    with pytest.raises(DescriptionError, match=r"stream rx \(3 lanes, one per queue pair\): s_axis_tdata is 64 "
                                               r"bits: the description needs 3 x W bits"):
        check_ports(opts.variant, read_ports(opts.variant))


def test_a_direction_mismatch(tmp_path: Path, verilator: None) -> None:
    path = variant_of(tmp_path, 'ready = "irq_ready"', 'ready = "irq_valid"')
    opts = RtlOptions(str(path))
    with pytest.raises(DescriptionError, match="port 'irq_valid' is an output of virtio_net_top, the role needs an "
                                               "input"):
        check_ports(opts.variant, read_ports(opts.variant))


def test_the_bridge_is_generated_from_the_roles(verilator: None) -> None:
    opts = RtlOptions("virtio-net,data_w=128")
    ports = read_ports(opts.variant)
    assert ports["m_axi_wdata"].width == 128 and ports["rst_n"].direction == "in"
    cpp = render_bridge(opts.variant, ports, check_ports(opts.variant, ports))
    assert "t->rst_n = 0;" in cpp and "t->m_axi_arready" in cpp and "b->dma[0].w = 16;" in cpp
    assert "virtio_net_top__DOT__u_engine__DOT__state == 0u" in cpp
    assert "t->s_axis_tdest = f.dest;" in cpp and "LANES" not in cpp  # one port, tdest the pair
    acme = RtlOptions("acme-vnet,queues=4")
    ports = read_ports(acme.variant)
    cpp = render_bridge(acme.variant, ports, check_ports(acme.variant, ports))
    assert "constexpr unsigned LANES = 4;" in cpp and "RX_BYTES = 16, TX_BYTES = 16" in cpp
    assert "tdest" not in cpp.split("namespace {", 1)[1]  # lanes, no tdest


def test_a_wrong_reset_polarity_is_named_before_any_check(tmp_path: Path, verilator: None) -> None:
    path = variant_of(tmp_path, 'active = "low"', 'active = "high"')
    with pytest.raises(ValueError, match=r"does not answer on its BAR 0 slave after reset.*'rst_n' really "
                                         r"active-high"):
        open_rtl(str(path))


def test_the_design_command(tmp_path: Path, verilator: None, capsys: pytest.CaptureFixture[str]) -> None:
    """``vdpa-bench design``: the roles table and exit 0 for a matching description; the error and exit 2."""
    from testbenches.cli import main

    assert main(["design", "virtio-net"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "s_axil_*" in out and "ports match the description" in out
    path = variant_of(tmp_path, 'prefix = "m_axi_"', 'prefix = "m_axis_"')
    assert main(["design", str(path)]) == 2
    assert "port 'm_axis_awaddr' is missing from virtio_net_top" in " ".join(capsys.readouterr().out.split())
