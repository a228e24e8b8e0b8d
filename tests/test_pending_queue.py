"""The heap against a naive model: priority desc, FIFO within a priority, under any mix of
push / pop / remove."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from labd.pending_queue import Origin, PendingJob, PendingQueue

ORIGIN = Origin(user="u", os_user="u", os_uid=1, experiment_class="C", experiment_module="m",
                batch_id=None)


def job(i: int, prio: int) -> PendingJob:
    return PendingJob(job_id=f"J{i}", origin=ORIGIN, priority=prio)


ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(-3, 3)),
    st.tuples(st.just("pop"), st.just(0)),
    st.tuples(st.just("remove"), st.integers(0, 200))), max_size=300)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_matches_naive_model(operations):
    q = PendingQueue()
    records: dict[str, PendingJob] = {}
    model: list[tuple[int, int, str]] = []  # (-prio, seq, id)
    seq = 0
    for op, arg in operations:
        if op == "push":
            records[f"J{seq}"] = rec = job(seq, arg)
            q.push(rec)
            model.append((-arg, seq, f"J{seq}"))
            seq += 1
        elif op == "pop":
            model.sort()
            expected = model.pop(0)[2] if model else None
            got = q.pop()
            assert (got.job_id if got else None) == expected
        else:
            jid = f"J{arg}"
            removed = jid in records and q.remove(records[jid])
            present = [m for m in model if m[2] == jid]
            assert removed == bool(present)
            model = [m for m in model if m[2] != jid]
        model.sort()
        assert [j.job_id for j in q.ordered()] == [m[2] for m in model]
        assert [j.job_id for j in q.ordered(2)] == [m[2] for m in model[:2]]
        assert len(q) == len(model)
        for pos, m in enumerate(model, 1):
            assert q.position(records[m[2]]) == pos
