"""The actor pool on a real local Ray: every item exactly once, dead actors replaced, errors reported."""

from __future__ import annotations

from wmplan.jobs.pool import Failure, run_on_actors


def _pool(ray, tmp_path, crash_on=(), rendezvous=0):
    from tests.jobs.actors import Squarer

    remote = ray.remote(num_cpus=0.5)(Squarer)
    make = lambda: remote.remote(str(tmp_path), crash_on, rendezvous)  # noqa: E731
    call = lambda actor, x: actor.run.remote(x)  # noqa: E731
    return make, call


def test_every_item_once_and_both_actors_work(ray_cluster, tmp_path):
    make, call = _pool(ray_cluster, tmp_path, rendezvous=2)  # the first actor waits for the second, however busy the machine
    items = list(range(20))
    out = dict(run_on_actors(make, call, items, actors=2))
    assert sorted(out) == items
    assert all(out[i][0] == i * i for i in items)
    assert len({pid for _, pid in out.values()}) == 2  # both actors took items


def test_killed_actor_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    make, call = _pool(ray_cluster, tmp_path, crash_on=(3, 11))
    lost = []
    results = list(run_on_actors(make, call, list(range(16)), actors=2, on_actor_lost=lambda i, r: lost.append(i)))
    indices = [i for i, _ in results]
    assert sorted(indices) == list(range(16))  # each exactly once
    assert sorted(lost) == [3, 11]
    assert all(not isinstance(r, Failure) and r[0] == i * i for i, r in results)
    assert (tmp_path / "crashed-3").exists() and (tmp_path / "crashed-11").exists()


def test_item_exception_is_a_failure_not_a_retry(ray_cluster, tmp_path):
    make, call = _pool(ray_cluster, tmp_path)
    out = dict(run_on_actors(make, call, [1, -1, 2], actors=2))
    assert out[0][0] == 1 and out[2][0] == 4
    assert isinstance(out[1], Failure) and "negative input" in out[1].reason and out[1].attempts == 1


def test_a_warm_pool_takes_new_work_while_running(ray_cluster, tmp_path):
    from tests.jobs.actors import Squarer
    from wmplan.jobs.pool import ActorPool

    remote = ray_cluster.remote(num_cpus=0.5)(Squarer)
    made = []

    def make():
        made.append(1)
        return remote.remote(str(tmp_path), (7,))

    with ActorPool(make, lambda actor, x: actor.run.remote(x), size=2) as pool:
        tickets = {pool.submit(x): x for x in (1, 2, 3)}
        first = pool.next_result()
        tickets[pool.submit(7)] = 7  # submitted while others run; its first actor dies under it
        results = dict([first] + [pool.next_result() for _ in range(3)])
        assert pool.pending == 0
        assert {tickets[t]: r[0] for t, r in results.items()} == {1: 1, 2: 4, 3: 9, 7: 49}
        assert len(made) == 3  # two at the start, one to replace the actor that died
        second = [pool.next_result() for _ in [pool.submit(x) for x in (4, 5)]]
        assert {r[0] for _, r in second} == {16, 25}
        assert len(made) == 3  # the second batch ran on the same warm actors: none was made for it
