"""scripts/display.sh and scripts/setup.sh decide correctly when nothing needs installing."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def test_display_sh_keeps_an_installed_xvfb_when_ldconfig_lists_much(tmp_path):
    """grep -q stops at the first match; ldconfig, still writing, must not fail the check (SIGPIPE)."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "installed"
    bin_dir.mkdir()
    _tool(bin_dir, "Xvfb", "exit 0")
    _tool(bin_dir, "ldconfig", "echo '\tlibxcb-icccm.so.4 (libc6,x86-64) => /usr/lib/libxcb-icccm.so.4'; seq 300000")
    for name in ("apt-get", "sudo"):
        _tool(bin_dir, name, f"echo {name} >> {marker}; exit 1")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for _ in range(3):
        result = subprocess.run(["bash", str(SCRIPTS / "display.sh")], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()


def _setup_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, calls = tmp_path / "repo", tmp_path / "pip-calls"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPTS / "setup.sh", root / "scripts" / "setup.sh")
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "setup.py").write_text("")
    (root / ".venv" / "bin").mkdir(parents=True)
    _tool(root / ".venv" / "bin", "python", f'echo "$*" >> {calls}')
    return root, calls


def _setup(root: Path, extras: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EXTRAS"}
    if extras:
        env["EXTRAS"] = extras
    result = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _installs(calls: Path) -> list[str]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.split()[-1] for line in lines if line.split()[-1].startswith(".[")]


def test_setup_sh_alternating_demo_and_test_installs_once(tmp_path):
    root, calls = _setup_tree(tmp_path)
    _setup(root, "dev")  # test.sh
    _setup(root, None)  # demo.sh: qt is included in qt,dev
    _setup(root, "dev")
    assert _installs(calls) == [".[qt,dev]"]


def test_setup_sh_installs_the_union_when_extras_are_missing(tmp_path):
    root, calls = _setup_tree(tmp_path)
    _setup(root, None)  # demo.sh first: qt only
    _setup(root, "dev")  # needs dev too: one install with both, kept for later demo runs
    _setup(root, None)
    _setup(root, "dev")
    assert _installs(calls) == [".[qt]", ".[dev,qt]"]


def test_setup_sh_reinstalls_when_the_sources_change(tmp_path):
    root, calls = _setup_tree(tmp_path)
    _setup(root, None)
    (root / "pyproject.toml").write_text("[project]\nname='x'\nversion='2'\n")
    _setup(root, None)
    assert _installs(calls) == [".[qt]", ".[qt]"]
