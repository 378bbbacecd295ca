"""The gates: phase 4 only after N consecutive clean verifications per table and an
empty repair log; phase 5 only after phase 4; each decision recorded with its reason."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from migrate.backfill import run_backfill
from migrate.checks import GateFailed, decide, evaluate_gate, record_check
from migrate.dual_write import record_repairs, replay_repair_log
from migrate.mapping import MappingError
from migrate.state import checks, gates
from migrate.tasks import GatePlan, gate
from migrate.verify import verify_table
from tests.migrate.conftest import execute


def _verify(old, new, tables, run_id: str) -> None:
    for mapping in tables:
        record_check(new, run_id, 3, verify_table(old, new, mapping))


def test_phase_gates_in_order(engines, mappings) -> None:
    old, new = engines
    tables = [mappings["orders"], mappings["customers"]]

    assert decide(old, new, 5, tables, "r0").failed_gate == "phase4_recorded"
    assert decide(old, new, 2, tables, "r0").failed_gate == "dual_writes"
    assert decide(old, new, 1, tables, "r1").allowed
    assert decide(old, new, 2, tables, "r1").allowed
    phase3 = decide(old, new, 3, tables, "r1")
    assert phase3.failed_gate == "backfill_complete" and "orders, customers" in phase3.reason

    run_backfill(old, new, mappings, tables, progress_bar=False)
    _verify(old, new, tables, "v1")
    assert decide(old, new, 3, tables, "r2").allowed
    _verify(old, new, tables, "v2")
    no = decide(old, new, 4, tables, "r2", required_clean_runs=3)
    assert not no.allowed and no.failed_gate == "clean_runs"
    assert "orders has 2 of 3 consecutive clean verifications" in no.message()
    assert "gate 'clean_runs' failed" in no.message()

    # an unclean run in between breaks the streak, naming what was wrong
    execute(new, "DELETE FROM orders WHERE id = 8")
    _verify(old, new, tables, "v3")
    execute(new, "DELETE FROM customers WHERE id = 1")
    run_backfill(old, new, mappings, tables, progress_bar=False)  # checkpoint: not copied again
    record_repairs(old, [("orders", 8), ("users", 1)], "queued by verify")
    replay_repair_log(old, new, mappings)
    _verify(old, new, tables, "v4")
    _verify(old, new, tables, "v5")
    streak = evaluate_gate(old, new, 4, tables, required_clean_runs=3)
    assert streak.failed_gate == "clean_runs"
    assert (
        "orders has 2 of 3 consecutive clean verifications; last unclean: missing 1"
        in streak.reason
    )
    assert evaluate_gate(old, new, 4, tables, required_clean_runs=2).allowed

    _verify(old, new, tables, "v6")
    record_repairs(old, [("orders", 10)], "dual write failed: test")
    blocked = decide(old, new, 4, tables, "r3", required_clean_runs=3)
    assert blocked.failed_gate == "repair_log"
    assert "1 repair-log entries not replayed" in blocked.reason

    replay_repair_log(old, new, mappings)
    assert decide(old, new, 4, tables, "r4", required_clean_runs=3).allowed
    assert decide(old, new, 5, tables, "r5").allowed

    with new.connect() as conn:
        recorded = conn.execute(
            sa.select(gates.c.run_id, gates.c.phase, gates.c.allowed, gates.c.failed_gate).order_by(
                gates.c.id
            )
        ).all()
        unclean = conn.execute(
            sa.select(checks.c.missing, checks.c.sample_keys).where(
                checks.c.run_id == "v3", checks.c.table_name == "orders"
            )
        ).one()
    assert [tuple(r) for r in recorded] == [
        ("r0", 5, False, "phase4_recorded"),
        ("r0", 2, False, "dual_writes"),
        ("r1", 1, True, None),
        ("r1", 2, True, None),
        ("r1", 3, False, "backfill_complete"),
        ("r2", 3, True, None),
        ("r2", 4, False, "clean_runs"),
        ("r3", 4, False, "repair_log"),
        ("r4", 4, True, None),
        ("r5", 5, True, None),
    ]
    assert unclean.missing == 1 and json.loads(unclean.sample_keys)["missing"] == [8]


def test_the_gate_task_decides_as_its_plan_says(
    engines, mappings, old_sqlite_url, new_pg_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`migrate.tasks.gate` (the DAG's gate task) decides and records as its `GatePlan`
    says, or as the plan's fields given as keywords; a plan and fields together, or no
    run id, are refused."""
    monkeypatch.setenv("AIRFLOW_CONN_GATE_OLD", old_sqlite_url)
    monkeypatch.setenv("AIRFLOW_CONN_GATE_NEW", new_pg_url)
    old, new = engines
    names = ["orders", "customers"]
    tables = [mappings[n] for n in names]
    run_backfill(old, new, mappings, tables, progress_bar=False)
    _verify(old, new, tables, "v1")
    _verify(old, new, tables, "v2")

    allowed = gate("gate_old", "gate_new", 4, names, GatePlan("g1", required_clean_runs=2))
    assert allowed == {
        "phase": 4,
        "allowed": True,
        "reason": "2 consecutive clean verifications per table, repair log empty",
    }
    with pytest.raises(GateFailed, match="orders has 2 of 3 consecutive clean verifications"):
        gate("gate_old", "gate_new", 4, names, GatePlan("g2"))  # 3 by default
    with pytest.raises(GateFailed, match="orders has 2 of 5 consecutive"):
        gate("gate_old", "gate_new", 4, names, run_id="g3", required_clean_runs=5)
    assert gate("gate_old", "gate_new", 4, ["orders"], run_id="g4", required_clean_runs=1)[
        "allowed"
    ]
    with pytest.raises(MappingError, match="nowhere.yml does not exist"):
        gate("gate_old", "gate_new", 4, names, GatePlan("g5", config="nowhere.yml"))
    with pytest.raises(TypeError, match="not both"):
        gate("gate_old", "gate_new", 4, names, GatePlan("g6"), required_clean_runs=1)
    with pytest.raises(TypeError, match="run_id"):
        gate("gate_old", "gate_new", 4, names, required_clean_runs=1)

    with new.connect() as conn:
        recorded = conn.execute(
            sa.select(gates.c.run_id, gates.c.allowed, gates.c.failed_gate)
            .where(gates.c.run_id.like("g%"))
            .order_by(gates.c.id)
        ).all()
    assert [tuple(r) for r in recorded] == [
        ("g1", True, None),
        ("g2", False, "clean_runs"),
        ("g3", False, "clean_runs"),
        ("g4", True, None),
    ]
