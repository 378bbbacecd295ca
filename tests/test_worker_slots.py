"""Two pytest sessions at once never share a worker's dbt target or Airflow home."""

from __future__ import annotations

import os
import shutil
import uuid

from tests.conftest import _ROOT, _claim_worker_slot


def test_a_held_slot_sends_the_next_session_to_the_next_slot() -> None:
    worker = f"gwtest{uuid.uuid4().hex[:8]}"
    homes = [os.path.join(_ROOT, ".airflow", f"xdist-{worker}{s}") for s in ("", "-1")]
    try:
        first, first_lock = _claim_worker_slot(worker)
        second, second_lock = _claim_worker_slot(worker)
        assert (first, second) == (f"xdist-{worker}", f"xdist-{worker}-1")
        second_lock.close()
        first_lock.close()
        # released: the next session takes the first slot again (its state is reused)
        again, again_lock = _claim_worker_slot(worker)
        again_lock.close()
        assert again == f"xdist-{worker}"
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
