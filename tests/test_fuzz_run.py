"""The fuzz tests' shared seeds and budgets (tests/support/fuzz_run.py): a run replays
exactly from the seed and round count a failure names, a crashed child included."""
import pytest

from support import fuzz_run


def test_a_crashed_child_names_the_round_it_died_in(monkeypatch):
    monkeypatch.setenv("VMM_FUZZ_SEED", "7")
    monkeypatch.delenv("VMM_FUZZ_ROUNDS", raising=False)
    with pytest.raises(AssertionError) as failed:
        fuzz_run.run("crash", "fuzz_crash", 1234, secs=60)
    assert "seed 7 failed in round 1234" in str(failed.value)
    assert "replay: VMM_FUZZ_SEED=7 VMM_FUZZ_ROUNDS=1234" in str(failed.value)


def test_rounds_replay_exactly_and_seconds_prefer_the_tests_own(monkeypatch):
    monkeypatch.setenv("VMM_FUZZ_ROUNDS", "50")
    assert fuzz_run.run("count", "fuzz_crash", 0)["rounds"] == "50"
    monkeypatch.setenv("VMM_FUZZ_SECONDS", "9")
    monkeypatch.setenv("MINE_FUZZ_SECONDS", "4")
    assert fuzz_run.seconds(3, "MINE_FUZZ_SECONDS") == 4.0
    assert fuzz_run.seconds(3) == 9.0
    budget = fuzz_run.Budget.from_env(3, "MINE_FUZZ_SECONDS")
    while budget.more():
        pass
    assert budget.rounds == 50


def test_an_in_process_failure_names_seed_and_round():
    budget = fuzz_run.Budget(60, 10)
    with pytest.raises(AssertionError, match=r"round 3 with seed 5 \(replay: X_SEED=5 VMM_FUZZ_ROUNDS=3\)"):
        with fuzz_run.seed_named_on_failure("X_SEED", 5, budget):
            while budget.more():
                assert budget.rounds < 3
