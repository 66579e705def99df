"""Two simulated nodes (ray.cluster_utils.Cluster): one CPU-only, one with a (logical) GPU.

Target "mixed" puts a CPU actor on the first node and a GPU actor on the second; both pull
shards from one queue, and the artifact bytes reach the second node through the object store.
"""

import pytest
import ray
from ray.cluster_utils import Cluster

from g2p_batch.job.driver import run_job
from tests.fakes import prepare_fake_engine
from tests.lexicons import check_output, job_config, job_inputs


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_mixed_job_on_two_nodes(two_nodes, tmp_path):
    expected = job_inputs(tmp_path)
    # CPU actors start once the GPU actor is up (see the test below): the GPU actor's first
    # decode waits until a CPU actor has decoded, so both take shards however loaded the machine
    marker = str(tmp_path / "cpu-decoded")

    def factory(config, target):
        role = {"wait_for": marker} if target == "cuda" else {"signal": marker}
        return prepare_fake_engine(config, target, **role)

    report = run_job(job_config(tmp_path, target="mixed", rows_per_shard=10), engine_factory=factory)
    assert report.ok and report.shards_committed == report.shards_planned == 11
    targets = {a["target"] for a in report.actors.values()}
    nodes = {a["node"] for a in report.actors.values()}
    assert targets == {"llvm", "cuda"} and len(nodes) == 2
    assert sum(a["rows"] for a in report.actors.values()) == expected.num_rows
    check_output(expected, tmp_path / "out")


def test_cpu_actors_wait_while_a_gpu_actor_starts():
    """No Ray here: the pool's start order alone. A CPU actor started beside a starting GPU
    actor may land on the GPU's node and take the CPU the GPU actor needs there; then the GPU
    actor never starts and the job waits forever (the two-node test above hung so in a CI run)."""
    from collections import deque
    from types import SimpleNamespace

    from g2p_batch.job.config import ActorGroup
    from g2p_batch.job.driver import _Pool, _Slot

    pool = _Pool.__new__(_Pool)
    gpu, cpu = ActorGroup("cuda", 1, 1, 1, 1), ActorGroup("llvm", 2, 1, 0, 1)
    pool.slots = [_Slot(gpu, 0), _Slot(cpu, 0), _Slot(cpu, 1)]
    pool.pending, pool.inflight, pool.settings = deque(range(6)), {}, None
    started = []

    def start(slot):
        started.append((slot.group.kind, slot.index))
        slot.state = "starting"
        slot.actor = SimpleNamespace(process=SimpleNamespace(remote=lambda *a: object()))
    pool._start = start

    pool._fill()
    assert started == [("gpu", 0)]
    pool.slots[0].state = "idle"  # the GPU actor is up, on its node's CPU
    pool._fill()
    assert started == [("gpu", 0), ("cpu", 0), ("cpu", 1)]
    assert pool.slots[0].state == "busy"
