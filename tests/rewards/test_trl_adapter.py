"""TRL adapter: routing by the verifier column, None for other rows, crashes/hangs cost only their samples."""

from __future__ import annotations

import time
from pathlib import Path

from rewards.pool import VerifierPool
from rewards.trl_adapter import build_reward_functions

PLUGIN = Path(__file__).parent / "plugins" / "slow_check.py"


def conv(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_routing_weights_and_logging():
    funcs, weights = build_reward_functions(
        [{"name": "exact"}, {"name": "math", "weight": 0.5},
         {"name": "overlong", "weight": 0.1, "all_rows": True, "kwargs": {"max_len": 30, "buffer": 5}}]
    )
    assert weights == [1.0, 0.5, 0.1]
    logged = {}
    kw = {"answer": ["7", "0.5", "7"], "verifier": ["exact", "math", "exact"], "meta": [None] * 3,
          "log_metric": logged.__setitem__, "trainer_state": None}
    comps = conv(["7", "\\boxed{\\frac{1}{2}}", "8" * 40])
    assert funcs[0](prompts=[None] * 3, completions=comps, **kw) == [1.0, None, 0.0]
    assert funcs[1](prompts=[None] * 3, completions=comps, **kw) == [None, 1.0, None]
    shaped = funcs[2](prompts=[None] * 3, completions=comps, **kw)
    assert shaped[:2] == [0.0, 0.0] and shaped[2] < 0
    assert logged["verifiers/exact/ok_frac_of_scored"] == 0.5 and logged["verifiers/exact/wrong_frac_of_scored"] == 0.5
    assert funcs[0].stats.summary()["success_rate"] == 0.5


def test_logged_status_fractions_add_up_over_batches():
    """Averaged over batches as TRL does (each key over the batches that logged it), the fractions of one verifier
    still add up to 1: every status is logged every batch."""
    from collections import defaultdict

    funcs, _ = build_reward_functions([{"name": "think_format", "all_rows": True}])
    logged: dict[str, list[float]] = defaultdict(list)

    def log_metric(key: str, value: float) -> None:
        logged[key].append(value)

    batches = [["<think>a</think>1", "<think>b</think>2"], ["no tags", "<think>c</think>3"], ["x", "y"]]
    for comps in batches:
        funcs[0](completions=comps, log_metric=log_metric)
    means = {k: sum(v) / len(v) for k, v in logged.items() if k.startswith("verifiers/think_format/")}
    assert all(len(v) == len(batches) for v in logged.values())
    assert abs(sum(means.values()) - 1.0) < 1e-9 and means["verifiers/think_format/ok_frac_of_scored"] == 0.5


def test_plain_string_completions_and_missing_columns():
    funcs, _ = build_reward_functions([{"name": "exact", "all_rows": True}])
    assert funcs[0](prompts=["p"], completions=["5"], answer=["5"]) == [1.0]
    assert funcs[0](prompts=["p"], completions=["5"]) == [0.0]  # no answer column: graded against ""


def test_raising_and_hanging_verifiers_cost_only_their_samples():
    pool = VerifierPool(workers=2)
    try:
        funcs, _ = build_reward_functions(
            [{"name": f"{PLUGIN}:boom"}, {"name": f"{PLUGIN}:hang", "timeout_s": 0.5}, {"name": "exact"}], pool=pool
        )
        names = [f"{PLUGIN}:boom", f"{PLUGIN}:hang", f"{PLUGIN}:hang", "exact"]
        kw = {"answer": ["a"] * 4, "verifier": names}
        comps = ["a"] * 4
        assert funcs[0](completions=comps, **kw) == [0.0, None, None, None]
        assert funcs[1](completions=comps, **kw) == [None, 0.0, 0.0, None]  # the hung samples: timeouts
        assert funcs[2](completions=comps, **kw) == [None, None, None, 1.0]
        assert funcs[0].stats.statuses["error"] == 1 and funcs[1].stats.statuses["timeout"] == 2
    finally:
        pool.close()


def test_in_process_only_verifier_gets_a_thread_budget():
    from rewards import register_verifier

    @register_verifier("test_sleepy_local")
    def sleepy(completion, answer, **row):
        time.sleep(3)
        return 1.0

    funcs, _ = build_reward_functions([{"name": "test_sleepy_local", "timeout_s": 0.3, "all_rows": True}])
    assert funcs[0](completions=["x"]) == [0.0]  # 1.0 had the 3 s call been waited for
    assert funcs[0].stats.statuses["timeout"] == 1
