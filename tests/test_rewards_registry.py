"""Registry: function built-ins take their options (e.g. the processing class) through their factories."""

from trl_omni.rewards import get_reward


def test_builtin_function_rewards_take_options_through_their_factories():
    from trl_omni.testing import tiny_chameleon

    _, processor = tiny_chameleon(seed=0)
    tokenizer = processor.tokenizer
    ids = tokenizer("<reserved12856>THOUGHT 1: ok.<reserved12857><reserved12866>3<reserved12867>").input_ids
    text = tokenizer.decode(ids, skip_special_tokens=True)  # what TRL passes: the tags are gone
    accuracy = get_reward("accuracy", processing_class=processor)
    assert accuracy(completions=[text], completion_ids=[ids], answer=["3"]) == [1.0]
    fmt = get_reward("format", processing_class=processor)
    assert fmt(completions=[text], completion_ids=[ids]) == [1.0]
    # Without the processing class the tags are invisible in TRL's text.
    assert get_reward("format")(completions=[text], completion_ids=[ids]) == [0.0]
