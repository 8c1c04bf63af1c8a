"""The backend ships alone: its daemon imports nothing of the bench, and a venv with ``pip install .`` (no
extras) serves a device exported by the bench over vhost-user, by console script and by the embedding example."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from sim.child_process import ChildProcess
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import LISTENING, DeviceProcess

REPO = Path(__file__).resolve().parent.parent
#: Modules of the bench (and of its extra) that the backend daemon must not pull in.
BENCH_ONLY = ("pytest", "rich", "sim", "models", "testbenches", "scapy", "numpy", "hypothesis", "jinja2")
READY_TIMEOUT = 30.0
MEM_SIZE = 4 << 20
#: What a copy of the source tree leaves out (build products, caches, other venvs).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "reports", "*.egg-info", "__pycache__", ".mypy_cache",
                                    ".ruff_cache", ".hypothesis", ".pytest_cache", "vendor_example")


def test_backend_daemon_imports_nothing_of_the_bench(tmp_path: Path) -> None:
    code = ("import sys, backend.daemon, backend.lifecycle, backend.targets; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({BENCH_ONLY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the backend daemon imported {proc.stdout.strip()}"


def test_package_data_covers_every_data_file() -> None:
    """An installed bench finds what it reads at run time beside its modules: the RTL sources and description
    files, the bridge template, the schema, the report templates. Every tracked file of a package that is not
    Python matches one of the package's package-data patterns."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns: dict[str, list[str]] = setuptools["package-data"]
    tracked = subprocess.run(["git", "ls-files", "backend", "sim", "models", "testbenches"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=30).stdout.split()
    missing = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".py", ".pyi") or path.name == "py.typed":
            continue
        # the nearest enclosing package (a folder with __init__.py) owns the file
        package = next((d for d in path.parents if (d / "__init__.py").is_file()), None)
        if package is None or package == REPO:
            continue
        key = ".".join(package.relative_to(REPO).parts)
        inside = path.relative_to(package)
        if not any(inside.match(p) and len(inside.parts) == len(Path(p).parts) for p in patterns.get(key, [])):
            missing.append(name)
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


@pytest.fixture(scope="module")
def backend_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding ``pip install <a copy of this tree>`` without extras."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    proc = subprocess.run([str(env_dir / "bin" / "pip"), "install", "--quiet", str(source)], capture_output=True,
                          text=True, timeout=540, check=False)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    listed = subprocess.run([str(env_dir / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert not installed & {"pytest", "rich", "scapy", "numpy", "hypothesis", "jinja2"}, installed
    return env_dir


def frame(i: int, size: int) -> bytes:
    head = bytes.fromhex("02000000000a020000000002080045") + i.to_bytes(4, "big")
    return (head + bytes((i * 7 + k) & 0xFF for k in range(size)))[:size]


def exchange_through(path: str) -> None:
    """The bench's Python frontend moves frames through the backend at ``path`` (looped back by the device)."""
    with GuestMemory.single(MEM_SIZE, gpa=0x1_0000_0000) as mem:
        fe = VhostUserFrontend.connect(path, mem)
        try:
            fe.start(queues=(0, 1), size=256)
            sent = [frame(i, 60 + (i * 13) % 1400) for i in range(50)]
            got = fe.exchange(sent, timeout=10.0)
            assert got == sent, f"sent {len(sent)} frames, {len(got)} came back (or altered)"
            fe.stop()
        finally:
            fe.close()


def child(argv: list[str], log: Path, cwd: Path) -> ChildProcess:
    """``argv`` in ``cwd`` (the backend venv's programs run outside the source tree), up when it listens."""
    return ChildProcess(argv, log=log, cwd=cwd, ready=LISTENING, ready_timeout=READY_TIMEOUT)


@pytest.mark.timeout(900)
def test_backend_alone_serves_a_vfio_user_device(backend_venv: Path, tmp_path: Path,
                                                 started: contextlib.ExitStack) -> None:
    bin_dir = backend_venv / "bin"
    device_sock = str(tmp_path / "dev.sock")
    started.enter_context(DeviceProcess(device_sock, "virtio-net,wire=loopback",
                                        log=tmp_path / "device.log")).wait_listening()

    # Without the bench extra the bench's own commands say what is missing.
    proc = subprocess.run([str(bin_dir / "vdpa-bench"), "run", "--target", "sim"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "vdpa-bench[bench]" in proc.stderr and len(proc.stderr.splitlines()) == 1, \
        proc.stderr

    # The console script, and vdpa-bench serve of the same install.
    for argv in ([str(bin_dir / "vdpa-backend"), "serve"], [str(bin_dir / "vdpa-bench"), "serve"]):
        vhost = str(tmp_path / "vhost.sock")
        serve = started.enter_context(child([*argv, "--socket", vhost, "--device", f"vfio-user:{device_sock}"],
                                            tmp_path / "serve.log", tmp_path))
        assert serve.wait_for(LISTENING, 0).group(0) == f"listening on {vhost}"
        exchange_through(vhost)
        assert serve.stop() == 0, serve.output()
        assert "DRIVER_OK" in serve.output(), serve.output()

    # The embedding example, run by the backend venv's interpreter.
    vhost = str(tmp_path / "embedded.sock")
    embedded = started.enter_context(child([str(bin_dir / "python"), str(REPO / "examples" / "embed_backend.py"),
                                            vhost, f"vfio-user:{device_sock}"], tmp_path / "embed.log", tmp_path))
    assert embedded.wait_for(LISTENING, 0).group(0) == f"listening on {vhost}"
    exchange_through(vhost)
    assert embedded.stop() == 0, embedded.output()
