"""What each material looks like on this station's tray, learned from scans the plant confirmed.

The same geometry printed in two materials is told apart only by how bright the part is against
the tray, and that depends on this station's lights, tray and cameras: no number from a data
sheet holds. So the station measures it on every identified scan and keeps, per material
(`<PROCESS>_<MATERIAL>_<COLOUR>`, the same on every geometry), the running mean and spread of the
scans an operator confirmed: a manual assignment, a reassignment, or an approval of an assigned
scan. Until enough have been seen the configured look (commissioning) stands in.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.common.durable import replace_durably
from amflow_edge.config.identification import IdentificationSettings
from amflow_edge.inspection.identification.models import APPEARANCE_MEASURE, MaterialLook
from amflow_edge.messaging.payload import EventName
from amflow_edge.storage.record import ScanRecord

log = structlog.get_logger(__name__)

LOOKS_FILE = "material_looks.json"
MAX_REMEMBERED_SCANS = 5000
"""Scans already learned from, so an assignment followed by an approval counts once."""
LEGACY_MEASURE = "lit80"
"""The measure of looks files written before the measure was recorded."""
MIN_SPREAD = 0.02
"""A spread learned from a few very similar parts would call the next part of the same material foreign."""


class LearnedLook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(ge=0, description="Confirmed scans measured.")
    mean: float = Field(description="Mean reflectance against the tray.")
    m2: float = Field(ge=0.0, description="Sum of squared deviations from the mean (Welford), for the spread.")


class LooksFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    measure: str = Field(
        default=LEGACY_MEASURE,
        description="The appearance measure the looks were learned with (APPEARANCE_MEASURE); files from before it "
        "was recorded were learned with lit80.",
    )
    looks: dict[str, LearnedLook] = Field(default_factory=dict, description="Per material key, what was learned.")
    learned_from: list[str] = Field(default_factory=list, description="UUIDs of the scans learned from, oldest first.")


def material_key(design_material: str) -> str:
    """`<PROCESS>_<MATERIAL>_<COLOUR>` of a design_material id: what every geometry in that material shares."""
    return design_material.split("_", 1)[1] if "_" in design_material else design_material


class MaterialLooks:
    def __init__(self, settings: IdentificationSettings, state_dir: Path) -> None:
        self._settings = settings
        self._path = state_dir / LOOKS_FILE
        self._lock = threading.Lock()
        self._file = self._load()

    def _load(self) -> LooksFile:
        try:
            found = LooksFile.model_validate_json(self._path.read_bytes())
        except FileNotFoundError:
            return LooksFile(measure=APPEARANCE_MEASURE)
        except (OSError, ValidationError) as exc:
            log.error(
                "learned material looks are unreadable; starting from the configured ones",
                path=str(self._path),
                error=str(exc),
            )
            return LooksFile(measure=APPEARANCE_MEASURE)
        if found.measure == APPEARANCE_MEASURE:
            return found
        aside = self._path.with_name(f"{self._path.stem}.{found.measure}{self._path.suffix}")
        try:
            self._path.replace(aside)
        except OSError as exc:
            log.error("learned material looks of another measure could not be set aside", error=str(exc))
        log.warning(
            "learned material looks were measured another way and are set aside; they are learned again from "
            "confirmed scans, and the configured ones stand in meanwhile (check they were measured as now)",
            set_aside=str(aside),
            learned_with=found.measure,
            measured_now=APPEARANCE_MEASURE,
        )
        return LooksFile(measure=APPEARANCE_MEASURE, learned_from=found.learned_from)

    def look(self, design_material: str) -> MaterialLook | None:
        key = material_key(design_material)
        with self._lock:
            learned = self._file.looks.get(key)
        if learned is not None and learned.samples >= self._settings.learn_after:
            spread = math.sqrt(learned.m2 / (learned.samples - 1)) if learned.samples > 1 else 0.0
            return MaterialLook(mean=learned.mean, spread=max(spread, MIN_SPREAD), samples=learned.samples)
        configured = self._settings.looks.get(key)
        if configured is not None:
            return MaterialLook(mean=configured.mean, spread=configured.spread, samples=0)
        return None

    def scan_event(self, event: EventName, record: ScanRecord) -> None:
        """Events listener: an operator's confirmation of a scan's design teaches its material's look."""
        scan = record.scan
        identification = record.station.identification
        if scan.design_material is None or identification is None or identification.appearance is None:
            return
        if identification.appearance_measure != APPEARANCE_MEASURE:
            return  # measured another way (before an upgrade): not comparable with what is learned now
        confirmed = (
            event in ("scan.assign", "scan.reassign")
            and scan.assignment is not None
            and scan.assignment.manual
            or event == "scan.quality_control"
            and scan.qc_operator is True
            and scan.assignment is not None
        )
        if confirmed:
            self.learn(scan.uuid, scan.design_material, identification.appearance)

    def learn(self, scan_uuid: str, design_material: str, appearance: float) -> None:
        if not math.isfinite(appearance) or appearance <= 0:
            return
        key = material_key(design_material)
        with self._lock:
            if scan_uuid in self._file.learned_from:
                return
            old = self._file.looks.get(key) or LearnedLook(samples=0, mean=0.0, m2=0.0)
            samples = old.samples + 1
            delta = appearance - old.mean
            mean = old.mean + delta / samples
            updated = LooksFile(
                measure=APPEARANCE_MEASURE,
                looks={
                    **self._file.looks,
                    key: LearnedLook(samples=samples, mean=mean, m2=old.m2 + delta * (appearance - mean)),
                },
                learned_from=[*self._file.learned_from, scan_uuid][-MAX_REMEMBERED_SCANS:],
            )
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                replace_durably(self._path, updated.model_dump_json(indent=2).encode())
            except OSError as exc:
                log.error("a material's look could not be saved; it is learned again later", error=str(exc))
                return
            self._file = updated
        log.info("material look learned from a confirmed scan", material=key, scan=scan_uuid, samples=samples)
