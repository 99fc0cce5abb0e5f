"""A plant's fleet at full length: twenty stations on one broker through every fault of the issue, then a
ten-minute broker outage, and the figures.

    .venv/bin/python benchmarks/fleet.py [--stations 20] [--rate 6] [--calm-s 120] [--outage-s 600]

Phases (each station a real `amflow-edge run` on the replay rig in a network namespace of its own; two
consumers in one shared group write PostgreSQL; an operator stand-in approves every scan; see tests/fleet.py):
1. calm: no fault; end-to-end latency from scan.capture committed (the outbox row) to its row in PostgreSQL.
2. faults (about 150 s): 200 ms added delay and 5 % packet loss on every station's link throughout; five
   stations partitioned for 60 s; the webhook receiver answering 500 for 120 s; a consumer killed mid-batch
   and restarted 30 s later; the plant broker killed (SIGKILL) and started again.
3. outage: the plant broker and the webhook receiver down for --outage-s while the stations keep capturing;
   then the time until PostgreSQL holds every event queued before the broker's return, the broker's peak
   queue ($SYS store count), and each webhook target's delivery rate while it catches up.
4. the stations stop capturing (restarted without their trigger, as after a shift), everything drains, and
   every scan on every disk is checked against PostgreSQL, the webhook receiver and the MQTT monitor.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from tests.fleet import Fleet, daemon_logs, make_recording  # noqa: E402
from tests.postgres import fresh_database  # noqa: E402


def wait(condition: object, timeout_s: float, what: str, fleet: Fleet) -> float:
    """Seconds until condition() held; exits with the daemons' logs when it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.5)
    print(f"FAILED: {what} within {timeout_s:.0f} s\n{daemon_logs(fleet)}", file=sys.stderr)
    raise SystemExit(1)


def capture_latencies(fleet: Fleet, since: float, until: float) -> list[float]:
    """Seconds from each scan.capture's outbox row to its event row in PostgreSQL, for captures in [since, until)."""
    created: dict[str, float] = {}
    for station in fleet.stations:
        for _seq, event_id, event, _scan, at in station.outbox():
            if event == "scan.capture" and since <= at < until:
                created[event_id] = at
    with psycopg.connect(fleet.dsn) as conn:
        rows = conn.execute(
            "SELECT event_id::text, extract(epoch FROM received_at) FROM amflow_scan_events "
            "WHERE event = 'scan.capture'"
        ).fetchall()
    return sorted(float(received) - created[e] for e, received in rows if e in created)


def queued_before(fleet: Fleet, moment: float) -> set[str]:
    return {e[1] for s in fleet.stations for e in s.outbox() if e[4] < moment}


def stored_events(fleet: Fleet) -> set[str]:
    with psycopg.connect(fleet.dsn) as conn:
        return {str(e) for (e,) in conn.execute("SELECT event_id FROM amflow_scan_events").fetchall()}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # A background job ignores SIGINT: stop it with SIGTERM, and still take the fleet down (namespaces, daemons,
    # broker, the run's database) on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--rate", type=float, default=6.0, help="scans per minute per station")
    parser.add_argument("--calm-s", type=float, default=120.0)
    parser.add_argument("--partition-s", type=float, default=60.0)
    parser.add_argument("--webhook-down-s", type=float, default=120.0)
    parser.add_argument("--outage-s", type=float, default=600.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="amflow-fleet-"))
    print(f"fleet: {args.stations} stations at {args.rate:g} scans/min each; work in {root}", flush=True)
    recording = make_recording(root / "recording")
    with fresh_database() as dsn, Fleet(root / "plant", recording, dsn, args.stations, 60.0 / args.rate) as fleet:
        fleet.start()
        wait(lambda: all(s.scans_on_disk() for s in fleet.stations), 180, "every station captured", fleet)

        calm_from = time.time()
        time.sleep(args.calm_s)
        calm_until = time.time()
        time.sleep(5)
        latencies = capture_latencies(fleet, calm_from, calm_until)

        print("faults: delay 200 ms, loss 5 %, partition, webhook 500, consumer killed, broker restart", flush=True)
        fleet.proxy.set_delay(0.2)
        for station in fleet.stations:
            station.host.set_loss(5)
        partitioned = fleet.stations[:5]
        for station in partitioned:
            station.host.partition()
        fleet.receiver.answer = 500
        faults_from = time.monotonic()
        time.sleep(10)
        fleet.consumers.kill(0)
        time.sleep(30)
        fleet.consumers.start(0)
        time.sleep(max(0.0, args.partition_s - (time.monotonic() - faults_from)))
        for station in partitioned:
            station.host.heal()
        time.sleep(10)
        fleet.broker.stop()  # killed outright (SIGKILL)
        time.sleep(5)
        fleet.broker.start()
        time.sleep(max(0.0, args.webhook_down_s - (time.monotonic() - faults_from)))
        fleet.receiver.answer = 200
        for station in fleet.stations:
            station.host.set_loss(0)
        fleet.proxy.set_delay(0.0)
        time.sleep(30)

        print(f"outage: the plant broker and the webhook receiver down for {args.outage_s:.0f} s", flush=True)
        assert fleet.monitor is not None
        outage_from = time.time()
        fleet.broker.stop(graceful=True)
        fleet.receiver.answer = 503
        time.sleep(args.outage_s)
        returned = time.time()
        pending = queued_before(fleet, returned)
        during = len(pending - queued_before(fleet, outage_from))
        captures = [
            e[4] for s in fleet.stations for e in s.outbox() if e[2] == "scan.capture" and calm_from <= e[4] < returned
        ]
        fleet.monitor.store_count_peak = 0
        fleet.broker.start()
        fleet.receiver.answer = 200
        drain_s = webhook_drain_s = None
        deadline = time.monotonic() + 900
        while drain_s is None or webhook_drain_s is None:
            if time.monotonic() > deadline:
                print(f"FAILED: the outage's backlog did not drain in 900 s\n{daemon_logs(fleet)}", file=sys.stderr)
                return 1
            if drain_s is None and pending <= stored_events(fleet):
                drain_s = time.time() - returned
            if webhook_drain_s is None and all(s.backlog()[1] == 0 for s in fleet.stations):
                webhook_drain_s = time.time() - returned
            time.sleep(0.5)
        rates = []
        for station in fleet.stations:
            caught_up = [p.at for p in fleet.receiver.accepted(f"/hooks/{station.id}") if p.at >= returned]
            if len(caught_up) > 1:
                rates.append((len(caught_up) - 1) / (caught_up[-1] - caught_up[0]))
        peak_queue = fleet.monitor.store_count_peak

        print("drain: stations restarted without their trigger; waiting for every event everywhere", flush=True)
        fleet.stop_capturing()
        wait(fleet.drained, 900, "every outbox, webhook and PostgreSQL drained", fleet)
        report = fleet.verify()

    per_station_rate = len(captures) / args.stations / ((returned - calm_from) / 60.0)
    print()
    print(
        f"stations × rate      {args.stations} × {per_station_rate:.2f} scans/min sustained from the calm phase to the "
        f"broker's return, faults and outage included ({report.scans_on_disk} scans in all)"
    )
    print(
        f"end-to-end, calm     median {statistics.median(latencies) * 1000:.0f} ms, p99 "
        f"{percentile(latencies, 99) * 1000:.0f} ms over {len(latencies)} scan.capture events (target p99 ≤ 1000 ms)"
    )
    print(
        f"outage drain         {drain_s:.1f} s after the broker's return until PostgreSQL held all {len(pending)} events "
        f"queued before it, {during} of them during the {args.outage_s:.0f} s outage (target ≤ 60 s); peak broker "
        f"store {peak_queue} messages"
    )
    print(
        f"webhook delivery     {statistics.median(rates):.1f} events/s per target (median; min {min(rates):.1f}, "
        f"max {max(rates):.1f}) while catching up; all {args.stations} targets' backlogs drained "
        f"{webhook_drain_s:.1f} s after the receiver's return"
    )
    print(f"lost / duplicated    {report.summary()}")
    print(f"verdict              {'CLEAN' if report.clean else 'NOT CLEAN'}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
