"""The pieces of a data-parallel run that one process can check: the one-process world changes nothing,
doctor's one-rank self-test of a backend, how the launcher names the rank that failed, and the resume
refusal for another number of ranks (tests/train/test_data_parallel.py runs real ranks)."""

from __future__ import annotations

import signal

import pytest

from localtune.errors import UsageError
from localtune.train.launch import _failure_line
from localtune.train.run import check_resume_identity
from localtune.train.world import PeerFailed, World, join, self_test


def test_one_process_is_a_world_of_one_whose_collectives_return_their_input(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = join("cpu")
    assert world == World() and world.main and not world.distributed
    assert world.sums([1.5, 2.0]) == [1.5, 2.0] and world.per_rank(3) == [3.0] and world.smallest(4) == 4
    assert world.shard([1, 2, 3]) == [1, 2, 3] and world.broadcast({"a": 1}) == {"a": 1} and world.gather(5) == [5]
    world.agree_no_error(None)
    with pytest.raises(UsageError):
        world.agree_no_error(UsageError("bad"))


def test_two_ranks_shard_a_step_by_striding_so_every_row_is_taken_once():
    rows = list(range(7))
    shares = [World(rank=r, size=2).shard(rows) for r in range(2)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5]] and sorted(shares[0] + shares[1]) == rows


def test_the_gloo_self_test_runs_a_one_rank_all_reduce():
    assert self_test("gloo") is None
    assert self_test("no-such-backend") is not None  # a failure comes back as text, not an exception


class Failure:
    def __init__(self, exitcode, pid, timestamp=0):
        self.exitcode, self.pid, self.timestamp = exitcode, pid, timestamp


def test_the_launcher_blames_the_rank_that_died_not_those_it_stopped():
    line = _failure_line({0: Failure(-signal.SIGTERM, 10, 1), 1: Failure(-signal.SIGKILL, 11, 2)})
    assert line == "rank 1 (pid 11) was killed by SIGKILL; the other rank (0) stopped with it"
    line = _failure_line({0: Failure(1, 10, 5), 1: Failure(143, 11, 1), 2: Failure(-signal.SIGTERM, 12, 1)})
    assert line.startswith("rank 0 (pid 10) exited with code 1; the other ranks (1, 2)")


def test_a_checkpoint_of_another_number_of_ranks_is_refused_saying_which_resumes():
    saved = {"base": "b", "world_size": 2}
    with pytest.raises(UsageError, match=r"number of ranks \(2, now 1: resume with --gpus 2, or 2 torchrun ranks\)"):
        check_resume_identity(saved, {"base": "b", "world_size": 1}, False, print)
    check_resume_identity({"base": "b"}, {"base": "b", "world_size": 1}, False, print)  # made before ranks existed
    warned = []
    check_resume_identity(saved, {"base": "b", "world_size": 4}, True, warned.append)
    assert "resume with --gpus 2" in warned[0]


def test_peer_failed_is_silent_and_keeps_the_exit_code():
    exc = PeerFailed(2)
    assert exc.exit_code == 2 and exc.message == ""


def test_the_progress_line_shows_the_world_size_and_each_ranks_tokens_per_second():
    from localtune.events import StepMetrics, describe

    common = dict(step=1, total_steps=2, epoch=0, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_seen=10)
    common.update(peak_memory_bytes=0, eta_s=1.0)
    two = describe(StepMetrics(**common, tokens_per_s=190.0, world_size=2, rank_tokens_per_s=[100.0, 90.0]))
    assert "190 tok/s on 2 ranks (100 + 90)" in two
    one = describe(StepMetrics(**common, tokens_per_s=190.0))
    assert "190 tok/s mem" in one and "ranks" not in one


def test_doctor_says_whether_nccl_works_with_two_gpus(monkeypatch):
    import torch.distributed as dist

    import localtune.train.world as world
    from localtune import doctor

    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(doctor, "_nccl_version", lambda: (2, 27, 3))
    monkeypatch.setattr(world, "self_test", lambda backend: None)
    ok = doctor._data_parallel_check(2)
    assert ok.status == doctor.PASS and "works (NCCL 2.27.3): --gpus up to 2" in ok.detail
    monkeypatch.setattr(world, "self_test", lambda backend: "unhandled cuda error")
    bad = doctor._data_parallel_check(4)
    assert bad.status == doctor.WARN and "unhandled cuda error" in bad.detail and "--gpus 1 works" in bad.fix
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert doctor._data_parallel_check(2).status == doctor.WARN and doctor._data_parallel_check(1).status == doctor.PASS


def test_the_launcher_exit_code_follows_the_rank_that_failed_first(tmp_path):
    from localtune.train.launch import RankFailed, _exit_code

    kill = -signal.SIGKILL
    # rank 1 ran out of memory and said so; rank 0, stuck in a GPU wait, was SIGKILLed 30 s later
    with pytest.raises(RankFailed, match=r"rank 1 \(pid 11\) exited with code 1"):
        _exit_code({0: Failure(kill, 10, 31), 1: Failure(1, 11, 1)}, tmp_path)
    assert _exit_code({0: Failure(2, 10, 1), 1: Failure(kill, 11, 31)}, tmp_path) == 2  # rank 0 said it
    assert _exit_code({0: Failure(1, 10, 1), 1: Failure(1, 11, 1)}, tmp_path) == 1  # the same error everywhere
    assert _exit_code({0: Failure(130, 10, 1), 1: Failure(130, 11, 1)}, tmp_path) == 130
    with pytest.raises(RankFailed, match="every rank lost contact"):
        _exit_code({0: Failure(3, 10, 1), 1: Failure(3, 11, 1)}, tmp_path)


class TwoRanks(World):
    """Rank `rank` of two, whose all-reduce of per-rank values returns `codes` (the other's value given)."""

    def __init__(self, rank: int, other: int):
        super().__init__(rank=rank, size=2)
        self.other = other

    def per_rank(self, value):
        return [float(value), float(self.other)] if self.rank == 0 else [float(self.other), float(value)]


def test_an_error_on_one_rank_stops_both_and_is_shown_where_it_happened():
    err = UsageError("data file missing on this machine")
    with pytest.raises(UsageError) as got:  # rank 1 alone: its own message is the one shown
        TwoRanks(1, other=0).agree_no_error(err)
    assert getattr(got.value, "own_rank", False)
    with pytest.raises(PeerFailed) as peer:  # rank 0 names rank 1 in the run's record
        TwoRanks(0, other=2).agree_no_error(None)
    assert peer.value.exit_code == 2 and "rank 1 failed" in peer.value.message
    with pytest.raises(PeerFailed) as quiet:  # rank 0 failed: rank 1 says nothing (rank 0 does)
        TwoRanks(1, other=2).agree_no_error(None)
    assert quiet.value.message == ""
    both = UsageError("bad flag")
    with pytest.raises(UsageError) as same:
        TwoRanks(1, other=2).agree_no_error(both)
    assert not getattr(same.value, "own_rank", False)  # every rank has it: rank 0 shows it
