"""sftrl.parallel.Collective: the cross-process sums, gathers and row sharding, on simulated processes
(each call answered with what every process would contribute)."""

from types import SimpleNamespace

import torch

from sftrl.parallel import Collective


class Simulated(Collective):
    """Process `rank` of `world`, whose exchanges return the given contributions of every process."""

    def __init__(self, rank, world, contributions=None):
        super().__init__(SimpleNamespace(num_processes=world, process_index=rank, device=torch.device("cpu")))
        self.contributions = contributions

    def _everyone(self, value):
        mine = self.contributions[self.rank]
        tensors = isinstance(mine, list) and mine and isinstance(mine[0], torch.Tensor)
        assert all(torch.equal(a, b) for a, b in zip(value, mine)) if tensors else value == mine
        return self.contributions

    def _reduce_sum(self, values):
        return [sum(column) for column in zip(*self.contributions)]

    def _max(self, value):
        return max(self.contributions)


def test_rows_sharded_over_processes_gather_back_in_global_order():
    rows = list("abcde")  # 5 rows over 2 processes: 3 and 2
    shards = [Simulated(rank, 2).local_rows(rows) for rank in (0, 1)]
    assert shards == [["a", "c", "e"], ["b", "d"]]
    for rank in (0, 1):
        assert Simulated(rank, 2, shards).gather_rows(shards[rank]) == rows


def test_sums_max_union_and_lists_over_processes():
    assert Simulated(0, 2, [[1, 2.5], [3, 0.5]]).sums([1, 2.5]) == [4, 3.0]
    assert Simulated(1, 2, [[1.0], [3.0]]).sum(3.0) == 4.0
    assert Simulated(0, 2, [2, 5]).max(2) == 5
    assert Simulated(1, 2, [["b", "a"], ["c", "a"]]).union(["c", "a"]) == ["a", "b", "c"]
    merged = Simulated(0, 2, [{"x": [1.0]}, {"x": [2.0], "y": [3.0]}]).gather_lists({"x": [1.0]})
    assert merged == {"x": [1.0, 2.0], "y": [3.0]}
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0])
    gathered, = Simulated(0, 2, [[a], [b]]).gather_tensors(a)
    assert gathered.tolist() == [1.0, 2.0, 3.0]


def test_one_process_returns_its_own_values_without_exchanging():
    one = Collective(SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu")))
    values = torch.tensor([1.0, 2.0])
    assert one.sum(2) == 2 and one.sums([1, 2]) == [1, 2] and one.max(3) == 3
    assert one.gather(values) is values and one.gather_tensors(values)[0] is values
    assert one.union(["b", "a"]) == ["a", "b"] and one.gather_rows([1, 2]) == [1, 2] == one.local_rows([1, 2])
    assert one.gather_lists({"x": [1]}) == {"x": [1]}
