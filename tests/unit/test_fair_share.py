"""Fair share on the bulk lane: a tenant's messages go out one priority step lower each time its backlog
doubles, one tenant per message (the pure part; tests/integration/test_fair_share.py runs it on a worker)."""

from __future__ import annotations

import uuid

from dfscan.outbox import fair_chunks
from dfscan.queueing import PRIORITY_SEP, PRIORITY_STEPS, fair_level, new_celery_app, queue_lists
from dfscan.settings import Settings


def test_the_step_grows_by_one_each_time_the_backlog_doubles() -> None:
    assert [fair_level(n) for n in (0, 1, 2, 3, 4, 7, 8, 255, 256, 10**6)] == [0, 1, 2, 2, 3, 3, 4, 8, 9, 9]
    assert fair_level(-3) == 0


def test_every_step_has_its_own_redis_list_and_the_transport_knows_all_of_them() -> None:
    names = queue_lists("inference")
    assert names[0] == "inference" and names[3] == f"inference{PRIORITY_SEP}3" and len(set(names)) == 10
    app = new_celery_app(Settings(_env_file=None))  # type: ignore[call-arg]
    assert app.conf.broker_transport_options["priority_steps"] == list(PRIORITY_STEPS)
    from kombu.transport.redis import Channel

    assert Channel.sep == PRIORITY_SEP


def test_a_flood_is_spread_over_the_steps_and_a_newcomer_starts_at_the_top() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    flood = [uuid.uuid4() for _ in range(200)]
    few = [uuid.uuid4() for _ in range(4)]
    tenant_of = {**dict.fromkeys(flood, a), **dict.fromkeys(few, b)}
    # A's 200 rows are written (200 outstanding) when its messages go out.
    chunks = fair_chunks(flood, tenant_of, {a: 200}, 1)
    steps = [level for level, _ in chunks]
    assert steps[:8] == [0, 1, 2, 2, 3, 3, 3, 3] and steps[-1] == 8
    assert [job for _, chunk in chunks for job in chunk] == flood  # every job once, in order
    # B's 4 come later: B has nothing else waiting, so they sit at steps 0-2, ahead of A's 196 others.
    assert [level for level, _ in fair_chunks(few, tenant_of, {b: 4}, 1)] == [0, 1, 2, 2]
    # A tenant with 300 already waiting sends its next jobs at the last step.
    assert {level for level, _ in fair_chunks(few, tenant_of, {b: 304}, 1)} == {9}


def test_a_message_holds_one_tenant_and_its_step_is_that_of_its_first_job() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(20)]
    tenant_of = {job: (a if i % 2 else b) for i, job in enumerate(ids)}
    chunks = fair_chunks(ids, tenant_of, {a: 10, b: 10}, 4)
    assert [(level, len(chunk)) for level, chunk in chunks] == [(0, 4), (3, 4), (4, 2)] * 2
    for _, chunk in chunks:
        assert len({tenant_of[job] for job in chunk}) == 1
    # A job without a row (deleted meanwhile) is still sent, at step 0.
    stray = uuid.uuid4()
    assert fair_chunks([stray], {}, {}, 8) == [(0, [stray])]
