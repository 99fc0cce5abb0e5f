"""The architecture as tests: no import cycles, dependencies one way, the control plane light.

`amflow_edge` → `drivers` → `inspection`; the simulator only behind the mock driver and `render`;
the config, request and payload models loadable without a geometry library or a camera SDK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.import_graph import REPO, cycles, import_graph, module_files
from tests.mqtt_helpers import Broker

FILES = module_files()
GRAPH = import_graph(FILES)

CONTROL_PLANE = (
    "amflow_edge.config.loading",
    "amflow_edge.messaging.command_models",
    "amflow_edge.messaging.commands",
    "amflow_edge.messaging.payload",
    "amflow_edge.messaging.asyncapi",
    "amflow_edge.qc.rules",
    "amflow_edge.qc.reasons",
    "amflow_edge.inspection.models",
    "amflow_edge.inspection.profiles",
    "amflow_edge.drivers.pylon_settings",
    "amflow_edge.cli.common",
)
HEAVY = ("open3d", "trimesh", "pypylon")


def _imports(module: str) -> set[str]:
    return set(GRAPH.successors(module))


def test_the_tree_is_read_as_one_package() -> None:
    assert "amflow_edge.drivers.mock" in FILES and "amflow_edge.inspection.align" in FILES
    assert not [m for m in FILES if m.split(".")[0] in ("drivers", "inspection")]


def test_no_module_imports_itself_back_through_others() -> None:
    assert cycles(GRAPH) == []


def test_packages_import_nothing_of_their_own_when_imported() -> None:
    """So a module's import of its parent package costs nothing and hides no cycle (the graph leaves those out)."""
    busy = sorted(
        module
        for module, path in FILES.items()
        if path.name == "__init__.py" and [target for target in _imports(module) if target != "amflow_edge"]
    )
    assert busy == []


def test_a_cycle_is_found_where_there_is_one(tmp_path: Path) -> None:
    package = tmp_path / "amflow_edge"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from amflow_edge.b import x\n")
    (package / "b.py").write_text("def x():\n    from amflow_edge import a\n")
    for name in ("drivers", "inspection"):
        (tmp_path / name).mkdir()
        (package / name).symlink_to(tmp_path / name)
    assert cycles(import_graph(module_files(tmp_path))) in (
        [["amflow_edge.a", "amflow_edge.b"]],
        [["amflow_edge.b", "amflow_edge.a"]],
    )


@pytest.mark.parametrize(
    ("layer", "may_import"),
    [
        ("amflow_edge.common", ("amflow_edge.common",)),
        ("amflow_edge.inspection", ("amflow_edge.inspection", "amflow_edge.common")),
        ("amflow_edge.drivers", ("amflow_edge.drivers", "amflow_edge.inspection", "amflow_edge.common")),
    ],
)
def test_dependencies_point_one_way(layer: str, may_import: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module in FILES
        if module == layer or module.startswith(layer + ".")
        for target in _imports(module)
        if not any(target == allowed or target.startswith(allowed + ".") for allowed in may_import)
    )
    assert wrong == []


def test_only_the_mock_driver_and_render_use_the_simulator() -> None:
    simulator = "amflow_edge.drivers.simulator"
    users = sorted(
        {
            module
            for module in FILES
            if not module.startswith(simulator)
            for target in _imports(module)
            if target.startswith(simulator)
        }
    )
    assert users == ["amflow_edge.cli.render", "amflow_edge.drivers.mock", "amflow_edge.drivers.mock_settings"]


def test_the_station_never_reads_the_inspection_internals_it_does_not_run() -> None:
    """The daemon's code reaches the inspection through its entry points and plain models only (`render` is the
    simulator's front end and places parts itself)."""
    entry_points = {
        "amflow_edge.inspection.inspect",
        "amflow_edge.inspection.designs",
        "amflow_edge.inspection.profiles",
        "amflow_edge.inspection.report",
        "amflow_edge.inspection.models",
        "amflow_edge.inspection.geometry.camera",
        "amflow_edge.inspection.calibration.board",
        "amflow_edge.inspection.calibration.capture",
        "amflow_edge.inspection.calibration.drift",
        "amflow_edge.inspection.calibration.errors",
        "amflow_edge.inspection.calibration.procedure",
        "amflow_edge.inspection.calibration.report",
        "amflow_edge.inspection.identification",
        "amflow_edge.inspection.identification.models",
        "amflow_edge.inspection.identification.pipeline",
        "amflow_edge.inspection.station_model.learn",
        "amflow_edge.inspection.station_model.model",
        "amflow_edge.inspection.station_model.report",
    }
    reached = {
        target
        for module in FILES
        if module.startswith("amflow_edge.")
        and not module.startswith(("amflow_edge.inspection", "amflow_edge.drivers", "amflow_edge.cli.render"))
        for target in _imports(module)
        if target.startswith("amflow_edge.inspection")
    }
    assert reached <= entry_points, sorted(reached - entry_points)


def test_nothing_but_the_mock_driver_knows_the_mock_scene() -> None:
    """The mock's truth (which design it placed, where) goes into the scan record for tests and benchmarks; a
    station that read it would identify parts only on the mock."""
    readers = sorted(
        module
        for module, path in FILES.items()
        if module.startswith("amflow_edge.")
        and module not in ("amflow_edge.drivers.mock", "amflow_edge.cli.render")
        and not module.startswith("amflow_edge.drivers.simulator")
        and "mock_scene" in Path(path).read_text(encoding="utf-8")
    )
    assert readers == []


def test_the_control_plane_imports_no_geometry_library_and_no_camera_sdk() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {CONTROL_PLANE!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_http_api_imports_no_geometry_library_and_no_camera_sdk() -> None:
    """The web package serves files and records; a station's screen must not wait for open3d to load."""
    code = (
        "import sys, amflow_edge.web.setup, amflow_edge.web.app, amflow_edge.cli.openapi\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_structure_checks_see_heavy_imports() -> None:
    """The control-plane test above would notice: the inspection pipeline does load them."""
    code = "import sys, amflow_edge.inspection.inspect; print(sorted(m for m in ('open3d', 'trimesh') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "['open3d', 'trimesh']", proc.stderr


def test_each_file_is_read_as_one_module() -> None:
    assert len(FILES) == len({path.resolve() for path in FILES.values()})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy, so setuptools' build/ folder in the checkout can never lend the wheel a stale file."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".*", "run", "build", "*.egg-info", "__pycache__", "tests", "benchmarks"),
    )
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work)]
    proc = subprocess.run([*build, str(source)], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [built] = work.glob("amflow_edge-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed on its own, away from the checkout (its dependencies come from the test venv)."""
    target = tmp_path_factory.mktemp("installed")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return target


SITE_PACKAGES = next(Path(p) for p in sys.path if p.endswith("site-packages"))


def _from_installed(
    installed: Path, *args: str, env: dict[str, str] | None = None, absent: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -S`, so nothing of the checkout's editable install is on the path: the installed package, the
    test venv's libraries, and stand-ins that fail to import for the libraries named `absent`."""
    stand_ins = installed.parent / "absent"
    for name in absent:
        (stand_ins / name).mkdir(parents=True, exist_ok=True)
        (stand_ins / name / "__init__.py").write_text("raise ImportError('not installed here')\n")
    path = [str(stand_ins)] if absent else []
    return subprocess.run(
        [sys.executable, "-S", "-m", "amflow_edge.cli", *args],
        cwd=installed.parent,  # not the checkout: nothing may come from its folders
        env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([*path, str(installed), str(SITE_PACKAGES)])},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_wheel_installs_one_package_with_the_drivers_and_the_inspection_inside(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        inspect_source = archive.read("amflow_edge/inspection/inspect.py")
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"amflow_edge"}
    assert "amflow_edge/drivers/pylon.py" in names and "amflow_edge/drivers/simulator/render.py" in names
    assert inspect_source == (REPO / "inspection" / "inspect.py").read_bytes()
    assert (
        "amflow_edge/files/inspection_profiles/default.toml" in names and "amflow_edge/files/qc_reasons.toml" in names
    )
    screen = REPO / "amflow_edge" / "web" / "static"
    shipped = {f"amflow_edge/web/static/{p.relative_to(screen).as_posix()}" for p in screen.rglob("*") if p.is_file()}
    assert "amflow_edge/web/static/index.html" in shipped and shipped <= set(names), sorted(shipped - set(names))


def test_the_installed_package_finds_its_own_profiles_and_reasons(installed: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import amflow_edge; print(amflow_edge.__file__)"],
        cwd=installed.parent,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(installed)), where.stdout
    proc = _from_installed(installed, "check-config", str(installed / "amflow_edge" / "files" / "station.example.toml"))
    assert proc.returncode == 2  # the example names a site's calibration, designs and TLS files, absent here
    assert "cameras[0].calibration" in proc.stderr and "designs.library" in proc.stderr, proc.stderr
    assert "inspection.profile" not in proc.stderr and "qc.reasons" not in proc.stderr, proc.stderr


def test_a_pylon_station_without_the_pylon_extra_is_told_what_to_install(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "station.toml"
    demo = installed / "amflow_edge" / "files" / "demo.toml"
    config.write_text(
        demo.read_text()
        .replace('driver = "mock"', 'driver = "pylon"')
        .replace('"designs/', f'"{demo.parent}/designs/')
        .replace('"calibration/', f'"{demo.parent}/calibration/')
    )
    proc = _from_installed(installed, "check-config", str(config), absent=("pypylon",))
    assert proc.returncode == 2 and "pip install 'amflow-edge[pylon]'" in proc.stderr, proc.stderr


def test_a_mock_station_runs_from_the_installed_package_without_the_extras(installed: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        env = {
            "AMFLOW_MQTT__PORT": str(broker.port),
            "AMFLOW_STATION__DATA_ROOT": str(tmp_path / "data"),
            "AMFLOW_STATION__STATE_DIR": str(tmp_path / "state"),
            "AMFLOW_INSPECTION__ENABLED": "false",
            "AMFLOW_MOCK__SCENE_POOL": "1",
            "AMFLOW_CAPTURE__TIMER_INTERVAL_S": "0.5",
        }
        demo = installed / "amflow_edge" / "files" / "demo.toml"
        proc = _from_installed(
            installed, "run", "--config", str(demo), "--scans", "1", env=env, absent=("pypylon", "evdev", "gpiod")
        )
    finally:
        broker.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p for p in (tmp_path / "data" / "scans").iterdir() if not p.name.startswith(".")]
