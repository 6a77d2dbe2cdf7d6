"""TRL's reward contract, as a TRL user's reward code expects it: conversational completions,
completion_ids, trainer_state and dataset columns as keyword arguments, async functions awaited
concurrently, None excluded from group statistics, and errors that name the function and the row."""

import json
import math
import time

import pytest
import torch

from sftrl import losses
from sftrl.errors import RewardError
from sftrl.rewards import load_reward, reward_matrix
from sftrl.trainer import Trainer

from conftest import make_config

TRL_REWARDS = '''
import asyncio

calls = []


def format_reward(prompts, completions, completion_ids, trainer_state, level, **kwargs):
    """Written for TRL's GRPOTrainer on conversational data."""
    calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                  "global_step": trainer_state.global_step, "max_steps": trainer_state.max_steps,
                  "level": level, "answer": kwargs["answer"], "solution": kwargs.get("solution")})
    return [float(len(c[0]["content"]) % 2) for c in completions]


async def judge_reward(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    calls.append({"async": True, "count": len(completions)})
    return [0.5] * len(completions)


def sometimes_none(prompts, completions, **kwargs):
    """Scores only completions of even length, like a verifier that does not apply to every row."""
    return [1.0 if len(c[0]["content"]) % 2 == 0 else None for c in completions]


def never(prompts, completions, **kwargs):
    return [None] * len(completions)


def weighted_a(prompts, completions, **kwargs):
    return [float(len(c[0]["content"]) % 3) for c in completions]


def weighted_b(prompts, completions, **kwargs):
    return [1.0 if "1" in c[0]["content"] else -1.0 for c in completions]


def boom(prompts, completions, question, **kwargs):
    if "BAD" in question:
        raise ZeroDivisionError("cannot grade this one")
    return [0.0] * len(completions)
'''


@pytest.fixture()
def trl_rewards(tmp_path):
    path = tmp_path / "trl_rewards.py"
    path.write_text(TRL_REWARDS)
    module = load_reward(f"{path}:format_reward").__globals__
    module["calls"].clear()
    return path, module


@pytest.fixture()
def chat_data(tmp_path):
    """Conversational rows (prompt = chat messages) with the gold under `solution` and a `level` column."""
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Compute {i}+{i}."}], "solution": str(2 * i),
             "demonstration": f"{i}+{i}={2 * i}\n\\boxed{{{2 * i}}}", "level": i % 3, "question": f"q{i}"}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trl_reward_functions_get_conversational_completions_ids_state_and_columns(
        tmp_path, tiny_model_dir, trl_rewards, chat_data):
    path, module = trl_rewards
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo", train_data=str(chat_data),
                                  answer_field="solution", reward_funcs=[f"{path}:format_reward", f"{path}:judge_reward"],
                                  max_steps=5))
    trainer.step = 3  # as if three optimizer steps were done
    examples = trainer.rows.examples[:2]
    rollouts = trainer.rollouts(examples)
    sync_call, async_call = module["calls"]
    assert async_call == {"async": True, "count": 8}  # the async function was awaited
    assert sync_call["completions"] == [[{"role": "assistant", "content": trainer.tokenizer.decode(
        ids, skip_special_tokens=True)}] for ids in rollouts.target_ids]
    assert sync_call["completion_ids"] == rollouts.target_ids
    assert sync_call["prompts"] == [examples[0].prompt] * 4 + [examples[1].prompt] * 4
    assert (sync_call["global_step"], sync_call["max_steps"]) == (3, 5)
    assert sync_call["level"] == [0] * 4 + [1] * 4  # a dataset column as a keyword argument
    assert sync_call["answer"] == sync_call["solution"] == ["0"] * 4 + ["2"] * 4
    expected = [float(len(c[0]["content"]) % 2) + 0.5 for c in sync_call["completions"]]
    assert rollouts.rewards.tolist() == pytest.approx(expected)


def test_async_reward_functions_are_awaited_concurrently():
    import asyncio

    async def slow(prompts, completions, **kwargs):
        await asyncio.sleep(0.4)
        return [1.0] * len(completions)

    async def slower(prompts, completions, **kwargs):
        await asyncio.sleep(0.4)
        return [None, 2.0]

    started = time.monotonic()
    per_function = reward_matrix([("slow", slow), ("slower", slower)], ["p", "p"], ["a", "b"], {})
    assert time.monotonic() - started < 0.75  # together, not one after the other (0.8 s)
    assert per_function[:, 0].tolist() == [1.0, 1.0]
    assert math.isnan(per_function[0, 1]) and per_function[1, 1] == 2.0


def naive_advantages(rewards, group_size, scale):
    """TRL 1.16 with unscorable rows: mean and std over the scorable rows of each group, advantage 0
    for an unscorable row (per-row Python, no tensors)."""
    out = []
    for g in range(0, len(rewards), group_size):
        group = rewards[g:g + group_size]
        present = [r for r in group if r is not None]
        if len(present) < 2:  # no std: TRL's NaN advantages become 0
            out += [0.0] * group_size
            continue
        mean = sum(present) / len(present)
        std = math.sqrt(sum((r - mean) ** 2 for r in present) / (len(present) - 1))
        for r in group:
            out.append(0.0 if r is None else (r - mean) / (std + 1e-4 if scale == "group" else 1.0))
    return out


@pytest.mark.parametrize("scale", ["group", "none"])
def test_none_rewards_are_left_out_of_the_group_statistics(scale):
    rewards = [1.0, None, 0.0, 1.0, None, 2.0, 0.0, 0.0]
    tensor = torch.tensor([math.nan if r is None else r for r in rewards])
    advantages, std = losses.group_advantages(tensor, 4, scale)
    assert advantages.tolist() == pytest.approx(naive_advantages(rewards, 4, scale), abs=1e-5)
    assert std[0] == pytest.approx(math.sqrt(1 / 3), abs=1e-6)  # the std of (1, 0, 1), not of (1, 0, 0, 1)


def test_trainer_warns_once_about_unscorable_rows_and_counts_them(tmp_path, tiny_model_dir, trl_rewards, chat_data,
                                                                  capsys):
    path, _ = trl_rewards
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo", train_data=str(chat_data),
                                  answer_field="solution", reward_funcs=[f"{path}:sometimes_none"]))
    torch.manual_seed(0)
    rollouts = trainer.rollouts(trainer.rows.examples[:3])
    rewards = [None if math.isnan(r) else r for r in rollouts.rewards.tolist()]
    assert None in rewards and 1.0 in rewards
    assert rollouts.advantages.tolist() == pytest.approx(naive_advantages(rewards, 4, "group"), abs=1e-5)
    assert rollouts.metrics["frac_reward_unscorable"] == pytest.approx(rewards.count(None) / len(rewards))
    assert rollouts.metrics["reward"] == 1.0  # the mean over the scored rows only
    trainer.rollouts(trainer.rows.examples[3:6])
    out = capsys.readouterr().out
    assert out.count("got None from every reward function") == 1
    assert f"{rewards.count(None)} of 12 rollouts" in out


def test_reward_metrics_are_weighted_and_over_rollouts_only(tmp_path, tiny_model_dir, trl_rewards, chat_data):
    path, _ = trl_rewards
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="luffy", train_data=str(chat_data),
                                  answer_field="solution", reward_funcs=[f"{path}:weighted_a", f"{path}:weighted_b"],
                                  reward_weights=[2.0, -1.0]))
    torch.manual_seed(0)
    rollouts = trainer.rollouts(trainer.rows.examples[:3], "replace")
    texts = [trainer.tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.target_ids]
    a = [float(len(t) % 3) for t in texts]
    b = [1.0 if "1" in t else -1.0 for t in texts]
    demo = rollouts.is_demo.tolist()
    own = [i for i in range(len(texts)) if not demo[i]]
    demos = [i for i in range(len(texts)) if demo[i]]
    m = rollouts.metrics
    assert m["reward"] == pytest.approx(sum(2 * a[i] - b[i] for i in own) / len(own))
    assert m["rewards/weighted_a/mean"] == pytest.approx(sum(a[i] for i in own) / len(own))
    assert m["rewards/weighted_b/mean"] == pytest.approx(sum(b[i] for i in own) / len(own))
    assert m["demo/reward"] == pytest.approx(sum(2 * a[i] - b[i] for i in demos) / len(demos))
    assert m["demo/rewards/weighted_a/mean"] == pytest.approx(sum(a[i] for i in demos) / len(demos))
    assert "accuracy" not in m  # a reward is not an accuracy


def test_a_reward_function_that_raises_names_the_function_and_the_row(tmp_path, trl_rewards):
    path, _ = trl_rewards
    fn = load_reward(f"{path}:boom")
    questions = ["q0", "q1", "BAD", "q3"]
    names = [f"data.jsonl row {i}" for i in range(4)]
    with pytest.raises(RewardError, match=r"'boom' raised ZeroDivisionError: cannot grade this one \(on data.jsonl row 2\)"):
        reward_matrix([("boom", fn)], ["p"] * 4, ["c"] * 4, {"question": questions}, row_names=names)


@pytest.mark.parametrize("returned,message", [
    ([1.0, float("inf")], r"'bad' returned inf for row b; rewards must be finite"),
    # NaN is not None: TRL would take it for None without a word; here it is named, with its value.
    ([1.0, float("nan")], r"'bad' returned nan for row b; rewards must be finite numbers \(return None for a "
                          r"completion the function does not score; TRL would treat NaN as None\)"),
    ([1.0, "yes"], r"'bad' returned 'yes' for row b; expected a number or None"),
])
def test_unusable_rewards_name_the_function_and_the_row(returned, message):
    with pytest.raises(RewardError, match=message):
        reward_matrix([("bad", lambda prompts, completions, **kw: returned)], ["p", "p"], ["x", "y"], {},
                      row_names=["row a", "row b"])
    if not isinstance(returned[1], str):  # the same from a tensor, as a grader written with torch returns it
        with pytest.raises(RewardError, match=message):
            reward_matrix([("bad", lambda prompts, completions, **kw: torch.tensor(returned))], ["p", "p"],
                          ["x", "y"], {}, row_names=["row a", "row b"])


def test_a_reward_function_without_kwargs_is_told_how_to_take_trls_arguments():
    def strict(prompts, completions, answer):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"'strict' raised TypeError: .*unexpected keyword argument 'completion_ids'.*"
                                          r"\(on row 0\); .*end the signature with \*\*kwargs"):
        reward_matrix([("strict", strict)], ["p"], ["c"], {"answer": ["1"]}, completion_ids=[[1]], row_names=["row 0"])
