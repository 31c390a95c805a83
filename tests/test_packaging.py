"""The user's layout installs correctly: a wheel built and installed into a fresh venv."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    return next(out.glob("napari_medseg-*.whl"))


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"napari_medseg"}
    assert "napari_medseg/training/__init__.py" in names
    assert "napari_medseg/resources/models/lite-medsam.yaml" in names
    assert "napari_medseg/resources/classes/totalsegmentator_v2.json" in names
    manifest = zipfile.ZipFile(wheel).read("napari_medseg/napari.yaml").decode()
    assert manifest == (REPO / "napari.yaml").read_text()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "napari-medseg = napari_medseg:napari.yaml" in text
    assert "medseg = napari_medseg.cli:main" in text


def test_wheel_in_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    probe = """
import importlib.util, importlib.metadata as md, pathlib
import napari_medseg, napari_medseg.training, napari_medseg.resources
site = pathlib.Path(napari_medseg.__file__).parents[1]
assert importlib.util.find_spec("training") is None and importlib.util.find_spec("resources") is None
assert napari_medseg.training.__file__.startswith(str(site))
(ep,) = md.entry_points(group="napari.manifest", name="napari-medseg")
module, file = ep.value.split(":")
locations = importlib.util.find_spec(module).submodule_search_locations
assert any((pathlib.Path(loc) / file).is_file() for loc in locations)
print(napari_medseg.__version__)
"""
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"


def test_editable_manifest_is_the_root_file():
    import importlib.util

    locations = importlib.util.find_spec("napari_medseg").submodule_search_locations
    found = [Path(loc) / "napari.yaml" for loc in locations if (Path(loc) / "napari.yaml").exists()]
    assert found and found[0].resolve() == (REPO / "napari.yaml").resolve()
