"""Reward specs: module:function, file.py:function, callables, errors; the built-in VADER reward."""

import pytest

from rankloop.rl.rewards import RewardError, call_reward, load_reward, vader_positive


def test_module_and_file_specs(tmp_path):
    fn = load_reward("rankloop.rl.rewards:length")
    assert call_reward(fn, ["p", "q"], ["one two", ""]) == [0.2, 0.0]
    f = tmp_path / "my_reward.py"
    f.write_text("def score(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    fn = load_reward(f"{f}:score")
    assert call_reward(fn, ["p"], ["abc"]) == [3.0]
    assert load_reward(len) is len


def test_bad_specs(tmp_path):
    with pytest.raises(RewardError, match="neither"):
        load_reward("no_colon_here")
    with pytest.raises(RewardError, match="cannot import"):
        load_reward("no.such.module:f")
    with pytest.raises(RewardError, match="no function"):
        load_reward("rankloop.rl.rewards:nope")
    with pytest.raises(RewardError, match="no config.json"):
        load_reward(str(tmp_path))
    with pytest.raises(RewardError, match="returned 1 values for 2"):
        call_reward(lambda p, r: [1.0], ["a", "b"], ["x", "y"])


def test_vader_positive_orders_sentiment():
    s = vader_positive(["", "", ""], ["She was very happy and loved her friends.", "The cat sat.",
                                      "He was sad and angry, it was awful."])
    assert s[0] > 0.5 and s[1] == 0.0 and s[2] < -0.5


def test_ppo_hands_reward_functions_the_prompt_content(tmp_path, tiny_gpt2):
    """run_ppo passes each prompt as the policy read it — a str — that still carries the prompt as given
    (``RenderedPrompt.content``), which reward-model directories render with their own template."""
    from rankloop.records import Prompt, RenderedPrompt
    from rankloop.rl.ppo import PPOConfig, run_ppo

    msgs = [{"role": "user", "content": "tell me about the cat."}]
    prompts = [Prompt(id="chat", messages=msgs), Prompt(id="text", text="the dog ran")]
    seen = []

    def reward(ps, rs):
        seen.extend(ps)
        return [0.0 for _ in rs]

    cfg = PPOConfig(policy=str(tiny_gpt2), output=str(tmp_path / "ppo"), iterations=1, batch_size=2,
                    minibatch_size=2, ppo_epochs=1, max_new_tokens=3, progress=False, tensorboard=False)
    run_ppo(cfg, reward_fn=reward, prompts=prompts)
    assert seen and all(isinstance(p, RenderedPrompt) for p in seen)
    by_content = {str(p.content): str(p) for p in seen}
    assert by_content == {str(msgs): "\n\nHuman: tell me about the cat.\n\nAssistant:", "the dog ran": "the dog ran"}
