"""docs/openapi.json is the HTTP API's contract (the operator's screen and integrations code against it): current,
and naming every route the events' URLs and the screen use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amflow_edge.cli.openapi import dump_openapi

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = ".venv/bin/amflow-edge openapi > docs/openapi.json"

ROUTES = {
    "/api/scan/{scan}/": {"get"},
    "/api/scan/{scan}/full_image/{number}/": {"get"},
    "/api/scan/{scan}/thumbnail/{number}/": {"get"},
    "/data/scans/{scan}/scan_cam{number}.png": {"get"},
    "/api/scan/{scan}/report/": {"get"},
    "/api/scan/{scan}/overlays.png": {"get"},
    "/api/scan/{scan}/detail/": {"get"},
    "/api/scans/": {"get"},
    "/api/state/": {"get"},
    "/api/parts/": {"get"},
    "/api/reasons/": {"get"},
    "/api/events/": {"get"},
    "/api/login": {"post"},
    "/api/logout": {"post"},
    "/api/scan/{scan}/qc/": {"post"},
    "/api/scan/{scan}/assign/": {"post"},
    "/api/scan/{scan}/reassign/": {"post"},
    "/api/scan/{scan}/unassign/": {"post"},
    "/api/scan/{scan}/reject/": {"post"},
    "/api/capture/": {"post"},
}


def test_committed_document_matches_the_routes() -> None:
    assert DOC_PATH.is_file(), f"docs/openapi.json is missing; generate it with: {REGENERATE}"
    committed, current = DOC_PATH.read_text(encoding="utf-8"), dump_openapi()
    if committed != current:
        for number, (old, new) in enumerate(zip(committed.splitlines(), current.splitlines(), strict=False), 1):
            if old != new:
                pytest.fail(
                    f"docs/openapi.json is stale (line {number}: {old.strip()!r} → {new.strip()!r}); {REGENERATE}"
                )
        pytest.fail(f"docs/openapi.json is stale (its length differs); {REGENERATE}")


def test_the_document_has_every_route_of_the_contract() -> None:
    doc = json.loads(dump_openapi())
    assert doc["openapi"].startswith("3.")
    assert {path: set(methods) for path, methods in doc["paths"].items()} == ROUTES
    schemas = doc["components"]["schemas"]
    scan = schemas["Scan"]
    assert list(scan["properties"]) == [
        "url", "created", "modified", "uuid", "scan_session", "design_material", "scan_urls", "scan_urls_full",
        "assignment", "output", "batch", "archived", "inspectionreport", "qc_machine", "qc_needs_review",
        "qc_operator", "qc_pass", "qc_comment", "qc_reasons",
    ]  # fmt: skip
    qc = doc["paths"]["/api/scan/{scan}/qc/"]["post"]
    assert {"200", "401", "404", "409", "422", "429"} <= set(qc["responses"])
    assert schemas["QcBody"]["additionalProperties"] is False


def test_the_cli_prints_the_committed_document(capsys: pytest.CaptureFixture[str]) -> None:
    from amflow_edge.cli.main import main

    assert main(["openapi"]) == 0
    assert capsys.readouterr().out == DOC_PATH.read_text(encoding="utf-8")
