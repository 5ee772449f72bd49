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
        # When each actor answered that it had started (the replacement may not have yet: it was not needed).
        assert 2 <= len(pool.ready_s) <= 3 and pool.ready_s == sorted(pool.ready_s) and pool.ready_s[0] > 0


def test_plan_actors_take_the_model_from_the_object_store_and_threads_from_their_share(ray_cluster, tiny_wall_model, tmp_path):
    from wmplan.jobs.actor import PlanActor, WorkItem
    from wmplan.jobs.experiment import load_config
    from wmplan.jobs.runner import actor_arguments, shared_model
    from wmplan.platform.registry import make_task
    from wmplan.platform.workflow import episode_specs

    ckpt, data = tiny_wall_model
    config = load_config(None, [f"model={ckpt}", f"data={data}", f"output={tmp_path}", "tracking=false"])
    assert shared_model(ray_cluster, config, device="cuda") is None  # a GPU actor loads straight onto its device
    ref = shared_model(ray_cluster, config, device="cpu")
    assert isinstance(ref, ray_cluster.ObjectRef)
    remote = ray_cluster.remote(num_cpus=0.5)(PlanActor)
    arguments = actor_arguments(config, device="cpu", threads=1)
    given, loading = remote.remote(**arguments, loaded=ref), remote.remote(**arguments)
    try:
        assert ray_cluster.get(given.torch_threads.remote()) == (1, 1)  # intra-op and inter-op, from its CPU share
        specs = episode_specs(make_task("wall"), horizon=2, count=3, seed=0, dataset=None)
        item = WorkItem(planner="grasp", options={"iterations": 20}, horizon=2, specs=specs, mode="open_loop",
                        replan_every=1, plan_seed=7)
        ours, theirs = ray_cluster.get([given.run.remote(item), loading.run.remote(item)])
        assert [r.final_distance for r in ours] == [r.final_distance for r in theirs]  # the same model either way
        assert [r.episode_id for r in ours] == [s.episode_id for s in specs]
    finally:
        for actor in (given, loading):
            ray_cluster.kill(actor)


def test_a_run_says_when_its_actors_were_ready_and_each_batch_stored(ray_cluster, tiny_wall_model, tmp_path):
    from wmplan.jobs.experiment import load_config
    from wmplan.jobs.runner import run_experiment

    ckpt, data = tiny_wall_model
    config = load_config(None, [f"model={ckpt}", f"data={data}", f"output={tmp_path}", "tracking=false", "planners=grasp",
                                "planners.grasp.iterations=20", "horizons=2", "episodes=6", "batch_size=2", "actors=2"])
    result = run_experiment(config, run_id="timed", say=lambda m: None)
    assert result.planned == 6 and result.failed_batches == 0
    assert len(result.stored_s) == 3 and list(result.stored_s) == sorted(result.stored_s)
    assert 0 < result.ready_s < result.stored_s[-1] <= result.seconds  # the actors start before the last batch is stored
