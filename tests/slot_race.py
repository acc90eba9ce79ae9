"""Two workers at a study's last trial slot, as two threads (each with its own
Search and database connection), for the trial-slot lock's tests."""

from __future__ import annotations

import threading
import time


def race_for_last_slot(searches: list, study_id: int) -> str:
    """The first takes the slot and waits 0.5 s between counting and creating its
    trial; the second tries meanwhile. Returns what happened to the second:
    "refused" (the lock made it count after the first's trial existed) or "created"."""
    from nas.trial_slots import TargetReached

    inside, outcome = threading.Event(), {}

    def first() -> None:
        with searches[0].trial_slot(study_id):
            inside.set()
            time.sleep(0.5)  # between counting and creating
            searches[0].storage.create_new_trial(study_id)

    def second() -> None:
        inside.wait(5)
        try:
            with searches[1].trial_slot(study_id):
                searches[1].storage.create_new_trial(study_id)
            outcome["second"] = "created"
        except TargetReached:
            outcome["second"] = "refused"

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcome.get("second", "hung")
