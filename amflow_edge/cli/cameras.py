"""`amflow-edge cameras …`: what an integrator needs at the station before the daemon runs.

`list` answers "which camera is which" by serial, the only identity that survives a
re-cabled switch; `save-features` captures a camera tuned in pylon Viewer as the .pfs file
the driver loads (and validates) at every start; `check-triggers` fires the whole rig many
times, as commissioning must before a station is handed over: a link budget that is wrong
loses a frame only now and then.

They come before the calibration, so they read the config without checking its calibration files
(cli.commissioning), and fire the cameras by software trigger even on a Line1-triggered station.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from amflow_edge.cli.commissioning import load_uncalibrated, software_triggered
from amflow_edge.cli.common import EXIT_CONFIG, EXIT_FAILED
from amflow_edge.ops.camera_inventory import connected_cameras


def cmd_list(args: argparse.Namespace) -> int:
    configured: dict[str, str] = {}
    if args.config is not None:
        cfg = load_uncalibrated(args.config)
        if cfg is None:
            return EXIT_CONFIG
        configured = {c.serial: c.name for c in cfg.cameras}
    cameras = connected_cameras(configured)
    rows = [("MODEL", "SERIAL", "INTERFACE", "ADDRESS", "STATION CAMERA")]
    rows += [(c.model, c.serial, c.interface, c.address, c.configured_as or "-") for c in cameras]
    missing = sorted((name, serial) for serial, name in configured.items() if serial not in {c.serial for c in cameras})
    rows += [("-", serial, "-", "-", f"{name} NOT CONNECTED") for name, serial in missing]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not cameras:
        print("no cameras found: check power and cables (GigE: the NIC's subnet, jumbo frames)", file=sys.stderr)
    return EXIT_FAILED if missing or not cameras else 0


def cmd_save_features(args: argparse.Namespace) -> int:
    from pypylon import genicam, pylon

    from amflow_edge.drivers.pylon import enumerate_cameras

    cfg = load_uncalibrated(args.config)
    if cfg is None:
        return EXIT_CONFIG
    directory: Path | None = args.dir or cfg.pylon.features_dir
    if directory is None:
        print("say where to write the .pfs files: --dir DIR, or pylon.features_dir in the config", file=sys.stderr)
        return EXIT_CONFIG
    directory.mkdir(parents=True, exist_ok=True)
    found = {info.GetSerialNumber(): info for info in enumerate_cameras()}
    failed = 0
    for camera in cfg.cameras:
        info = found.get(camera.serial)
        if info is None:
            print(f"{camera.name}: serial {camera.serial} not connected; skipped", file=sys.stderr)
            failed += 1
            continue
        path = directory / f"{camera.serial}.pfs"
        device = pylon.InstantCamera(pylon.TlFactory.GetInstance().CreateDevice(info))
        try:
            device.Open()
            pylon.FeaturePersistence.Save(str(path), device.GetNodeMap())
        except genicam.GenericException as exc:
            print(f"{camera.name}: cannot save features: {str(exc).splitlines()[0]}", file=sys.stderr)
            failed += 1
            continue
        finally:
            device.Close()
            device.DestroyDevice()
        print(f"{camera.name}  {path}  sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}")
    return EXIT_FAILED if failed else 0


def cmd_check_triggers(args: argparse.Namespace) -> int:
    from amflow_edge.drivers.base import DriverError
    from amflow_edge.drivers.pylon import PylonDriver
    from amflow_edge.drivers.trigger_check import run_trigger_check

    cfg = load_uncalibrated(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if cfg.rig.driver != "pylon":
        print(f"check-triggers is for Basler stations (rig.driver = 'pylon', not {cfg.rig.driver!r})", file=sys.stderr)
        return EXIT_CONFIG
    settings = software_triggered(cfg.pylon, "the check")
    driver = PylonDriver(cfg.cameras, settings)
    try:
        driver.open()
        for name, stream in driver.stream_settings().items():
            print(
                f"{name}: packet {stream.packet_size} bytes, inter-packet delay {stream.delay_ticks} ticks, "
                f"frame delay {stream.frame_delay_ticks} ticks ({stream.tick_hz / 1e6:g} MHz clock)"
            )
        print(f"{args.count} triggers ({settings.trigger}) of {len(cfg.cameras)} cameras…", flush=True)
        report = run_trigger_check(driver, [c.name for c in cfg.cameras], args.count, cfg.rig.grab_timeout_s)
    except DriverError as exc:
        print(f"check stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        driver.close()
    print(report.render())
    if not report.ok:
        print(
            "frames were lost: check pylon.gige (mtu, nic_mb_s, cameras_per_nic) against the NIC, then "
            "`amflow-edge doctor`; a single camera losing frames points at its cable or switch port",
            file=sys.stderr,
        )
    return 0 if report.ok else EXIT_FAILED


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cameras = sub.add_parser(
        "cameras", help="Basler cameras: list what is connected, save feature files, check triggering"
    )
    verbs = cameras.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="connected cameras and which station camera each is")
    listing.add_argument("--config", type=Path, help="station TOML, to match serials to cam01…cam05")
    listing.set_defaults(func=cmd_list)
    save = verbs.add_parser("save-features", help="write <serial>.pfs of every configured camera")
    save.add_argument("--config", type=Path, required=True, help="station TOML")
    save.add_argument("--dir", type=Path, help="where to write (default pylon.features_dir)")
    save.set_defaults(func=cmd_save_features)
    check = verbs.add_parser(
        "check-triggers",
        help="trigger all cameras N times: dropped and incomplete frames per camera, timestamp spread",
    )
    check.add_argument("--config", type=Path, required=True, help="station TOML (the station must be stopped)")
    check.add_argument("--count", type=_positive, default=100, help="how many triggers (default 100)")
    check.set_defaults(func=cmd_check_triggers)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value
