"""`amflow-edge cameras …`: what an integrator needs at the station before the daemon runs.

`list` answers "which camera is which" by serial, the only identity that survives a
re-cabled switch; `save-features` captures a camera tuned in pylon Viewer as the .pfs file
the driver loads (and validates) at every start.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from amflow_edge.cli.common import EXIT_CONFIG, EXIT_FAILED, load_or_report
from amflow_edge.ops.camera_inventory import connected_cameras


def cmd_list(args: argparse.Namespace) -> int:
    configured: dict[str, str] = {}
    if args.config is not None:
        cfg = load_or_report(args.config)
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

    cfg = load_or_report(args.config)
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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cameras = sub.add_parser("cameras", help="Basler cameras: list what is connected, save feature files")
    verbs = cameras.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="connected cameras and which station camera each is")
    listing.add_argument("--config", type=Path, help="station TOML, to match serials to cam01…cam05")
    listing.set_defaults(func=cmd_list)
    save = verbs.add_parser("save-features", help="write <serial>.pfs of every configured camera")
    save.add_argument("--config", type=Path, required=True, help="station TOML")
    save.add_argument("--dir", type=Path, help="where to write (default pylon.features_dir)")
    save.set_defaults(func=cmd_save_features)
