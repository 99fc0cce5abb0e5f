"""Five Basler cameras without hardware: pypylon's emulation (PYLON_CAMEMU) fed with image files.

The emulated cameras are configured the way a real station's are: through one .pfs feature
file per serial, written by `amflow-edge cameras save-features` and then pointed at an
image file (ImageFileMode/ImageFilename), so every frame is a known picture.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.cli.main import main
from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig

REPO = Path(__file__).resolve().parent.parent

EMULATED = [f"0815-000{i}" for i in range(5)]


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Five emulated cameras; pylon reads PYLON_CAMEMU at every enumeration."""
    monkeypatch.setenv("PYLON_CAMEMU", "5")
    return EMULATED


def save_features(config: Path, directory: Path) -> None:
    assert main(["cameras", "save-features", "--config", str(config), "--dir", str(directory)]) == 0


def point_at_image(pfs: Path, image: Path) -> None:
    """Edit a saved feature file so the emulated camera delivers `image` on every trigger."""
    text = pfs.read_text()
    for key, value in (("ImageFileMode", "On"), ("ImageFilename", str(image)), ("TestImageSelector", "Off")):
        text, count = re.subn(rf"^{key}\t.*$", f"{key}\t{value}", text, flags=re.MULTILINE)
        assert count == 1, f"{key} not in {pfs}"
    pfs.write_text(text)


def write_images(directory: Path, serials: list[str], width: int, height: int) -> dict[str, np.ndarray]:
    """A distinct noise picture per serial, so a frame tells which camera took it."""
    directory.mkdir(parents=True, exist_ok=True)
    images = {}
    for index, serial in enumerate(serials):
        image = np.random.default_rng(index).integers(0, 256, (height, width), dtype=np.uint8)
        cv2.imwrite(str(directory / f"{serial}.png"), image)
        images[serial] = image
    return images


def full_resolution_station(workdir: Path, port: int) -> StationConfig:
    """The demo station at full resolution, five emulated Basler cameras each fed a noise picture (the benchmarks'
    station; the daemon can run it from workdir/station.toml with PYLON_CAMEMU=5)."""
    images = workdir / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for serial in EMULATED:  # sensor-like noise around grey: PNG costs what it costs on real frames
        cv2.imwrite(str(images / f"{serial}.png"), np.clip(rng.normal(110, 12, (2048, 2448)), 0, 255).astype(np.uint8))
    text = (REPO / "config" / "demo.toml").read_text()
    for index, serial in enumerate(EMULATED, start=1):
        text = text.replace(f'serial = "4001230{index}"', f'serial = "{serial}"')
    text = text.replace('driver = "mock"', 'driver = "pylon"').replace("timer_interval_s = 3.0", "")
    text = text.replace('"designs/designs.toml"', f'"{REPO / "config" / "designs" / "designs.toml"}"')
    text = re.sub(r'calibration = "calibration/', f'calibration = "{REPO}/config/calibration/', text)
    # grab_margin_s: the emulation copies frames on a CPU the suite keeps busy; a real station keeps the default.
    text += f'\n[pylon]\nfeatures_dir = "{workdir / "features"}"\ngrab_margin_s = 5.0\n'
    config = workdir / "station.toml"
    config.write_text(
        text.replace('"../run/data"', f'"{workdir / "data"}"').replace('"../run/state"', f'"{workdir / "state"}"')
    )
    save_features(config, workdir / "features")
    for serial in EMULATED:
        point_at_image(workdir / "features" / f"{serial}.pfs", images / f"{serial}.png")
    cfg = load_config(config)
    return cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"port": port}),
            "inspection": cfg.inspection.model_copy(update={"enabled": False}),
        }
    )
