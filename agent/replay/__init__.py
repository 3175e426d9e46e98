"""Record a person's input as a trace, replay traces without a model, find recorded targets again.

    from agent.replay import replay
    result = replay("examples/fill_form_demo", display=":1")
"""


def __getattr__(name):  # lazy: importing agent.targets.locate should not pull in the player
    if name == "replay":
        from agent.replay.player import replay
        return replay
    raise AttributeError(name)
