"""Extension points: the vendor example package (tests/vendor_example) adds a model, a quirk and a target
scheme through entry points; a broken provider is a one-line error naming it, never a missing scheme."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from backend.drivers.quirks import PciIds, default_quirks
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.providers import MODELS_GROUP, QUIRKS_GROUP, TARGETS_GROUP, ProviderError, group
from backend.targets import default_registry
from backend.virtio.features import F
from testbenches.conformance.report import Results

VENDOR_DIST = "vdpa-bench-vendor-example"
VENDOR_DIR = Path(__file__).resolve().parent / "vendor_example"


@pytest.fixture(scope="module", autouse=True)
def vendor_installed() -> None:
    try:
        distribution(VENDOR_DIST)
    except PackageNotFoundError:
        pytest.fail(f"{VENDOR_DIST} is not installed: pip install -e {VENDOR_DIR} (make does it)")


def cli(args: Sequence[str], cwd: Path, *, pythonpath: Path | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath is not None else None
    return subprocess.run([sys.executable, "-m", "testbenches.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False)


def test_vendor_package_registers_a_model_a_quirk_and_a_scheme() -> None:
    assert group(TARGETS_GROUP)["acme"].dist is not None
    assert {ep.dist.name for ep in (group(TARGETS_GROUP)["acme"], group(MODELS_GROUP)["acme-vnet"],
                                    group(QUIRKS_GROUP)["acme-vnet"]) if ep.dist is not None} == {VENDOR_DIST}
    registry = default_registry()
    assert {"sim", "rtl", "vfio-user", "vfio", "acme"} <= set(registry.schemes)

    dev = registry.open("acme:vnet,queues=2")
    try:
        ids = PciIds.read(dev)
        assert (ids.subsystem_vendor, ids.subsystem_device) == (0xACE5, 0x4E01), str(ids)
        assert default_quirks().lookup(ids).name == "acme-vnet"
        driver = VirtioPciVdpaDevice(dev, owns_pci=False)
        try:
            assert driver.quirk.name == "acme-vnet"
            offered = driver.transport.device_features()
            assert offered >> F.RING_RESET & 1, "the Acme function offers RING_RESET"
            assert not driver.get_device_features() >> F.RING_RESET & 1, "the quirk hides RING_RESET upward"
            mac = driver.get_config(0, 6)
            assert mac == bytes.fromhex("02ace5000001"), mac.hex()
        finally:
            driver.close()
    finally:
        dev.close()
    # The model is also reachable as a variant of sim: targets.
    sim = registry.open("sim:virtio-net,model=acme-vnet,wire=none")
    try:
        assert PciIds.read(sim).subsystem_device == 0x4E01
    finally:
        sim.close()


def test_unknown_vendor_device_and_options_are_refused() -> None:
    registry = default_registry()
    with pytest.raises(ValueError, match="unknown device 'vdpa'"):
        registry.open("acme:vdpa")
    with pytest.raises(ValueError, match="unknown option 'foo'"):
        registry.open("acme:vnet,foo=1")


LAZY_PROBE = """
import sys
from backend.targets import default_registry
registry = default_registry()
assert "acme" in registry and "sim" in registry
print(sorted({m.split(".")[0] for m in sys.modules} & {"acme_vnet", "models", "sim"}))
"""


def test_registry_imports_a_provider_only_when_its_scheme_is_opened(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", LAZY_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"providers imported before use: {proc.stdout}"


def test_an_embedding_program_registers_its_own_scheme() -> None:
    registry = default_registry()
    registry.register("mine", lambda rest: registry.open(f"sim:{rest}"))
    assert "mine" in registry.schemes
    dev = registry.open("mine:virtio-net,wire=none")
    try:
        assert PciIds.read(dev).subsystem_device == 0x1100
    finally:
        dev.close()


def _fake_distribution(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> Path:
    """A distribution as pip would leave it (``NAME-VER.dist-info`` with METADATA and entry_points.txt)."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


BROKEN_SOURCE = """\
    raise RuntimeError("firmware blob acme.bin missing")
"""


def test_broken_target_provider_is_one_line_naming_it(tmp_path: Path) -> None:
    site = _fake_distribution(tmp_path / "site", "broken-vendor", "[vdpa_bench.targets]\nbroken = broken_vendor:open\n",
                              {"broken_vendor": BROKEN_SOURCE})
    for args, prog in ((["run", "--target", "broken:nic", "--out", str(tmp_path / "out")], "vdpa-bench run"),
                       (["serve", "--socket", str(tmp_path / "v.sock"), "--device", "broken:nic"], "vdpa-bench serve")):
        proc = cli(args, tmp_path, pythonpath=site)
        assert proc.returncode == 2, f"{args}: exit status {proc.returncode}; stderr {proc.stderr!r}"
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
        for needle in ("entry point 'broken'", "broken-vendor 0.1", "broken_vendor:open",
                       "RuntimeError: firmware blob acme.bin missing"):
            assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not (tmp_path / "out").exists()


def test_broken_quirk_provider_stops_serve(tmp_path: Path) -> None:
    site = _fake_distribution(tmp_path / "site", "bad-quirks", "[vdpa_bench.quirks]\nbad = bad_quirks:QUIRKS\n",
                              {"bad_quirks": "QUIRKS = [('not', 'a quirk')]\n"})
    proc = cli(["serve", "--socket", str(tmp_path / "v.sock"), "--device", "sim:virtio-net"], tmp_path,
               pythonpath=site)
    assert proc.returncode == 2, proc.stderr
    assert "entry point 'bad'" in proc.stderr and "not an iterable of (IdMatch, Quirk) pairs" in proc.stderr
    with pytest.raises(ProviderError, match="bad-quirks"):
        _quirks_with(site)


def _quirks_with(site: Path) -> None:
    sys.path.insert(0, str(site))
    try:
        default_quirks()
    finally:
        sys.path.remove(str(site))


def test_broken_vendor_package_import_is_one_line_naming_it(tmp_path: Path) -> None:
    """The vendor's own package failing to import (a module shadowing it on PYTHONPATH)."""
    shadow = tmp_path / "shadow" / "acme_vnet"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("import acme_firmware_sdk  # not installed\n")
    proc = cli(["run", "--target", "acme:vnet", "--out", str(tmp_path / "out")], tmp_path,
               pythonpath=shadow.parent)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in ("entry point 'acme'", VENDOR_DIST, "No module named 'acme_firmware_sdk'"):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.mark.timeout(900)
def test_suite_runs_on_the_vendor_scheme(tmp_path: Path) -> None:
    out = tmp_path / "acme"
    proc = cli(["run", "--target", "acme:vnet", "--out", str(out), "--no-progress"], tmp_path, timeout=840.0)
    results = Results.load(out / "results.json")
    assert results.target == "acme:vnet"
    # The vendor's quirk entry, matched by the function's PCI ids, is the one the report names.
    assert results.quirk.startswith("acme-vnet (matched by PCI ids "), results.quirk
    failed = [r.id for r in results.failed()]
    assert not failed, f"failed ids on acme:vnet: {failed}\n{proc.stdout[-3000:]}"
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert len(results.ids) > 100
