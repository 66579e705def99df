"""Two simulated nodes (ray.cluster_utils.Cluster): one CPU-only, one with a (logical) GPU.

Target "mixed" puts a CPU actor on the first node and a GPU actor on the second; both pull
shards from one queue, and the artifact bytes reach the second node through the object store.
"""

import functools

import pytest
import ray
from ray.cluster_utils import Cluster

from g2p_batch.driver import run_job
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
    report = run_job(job_config(tmp_path, target="mixed", rows_per_shard=10),
                     engine_factory=functools.partial(prepare_fake_engine, delay_s=0.05))
    assert report.ok and report.shards_committed == report.shards_planned == 11
    targets = {a["target"] for a in report.actors.values()}
    nodes = {a["node"] for a in report.actors.values()}
    assert targets == {"llvm", "cuda"} and len(nodes) == 2
    assert sum(a["rows"] for a in report.actors.values()) == expected.num_rows
    check_output(expected, tmp_path / "out")
