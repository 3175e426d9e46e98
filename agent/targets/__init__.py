"""What a step aimed at, and finding it again (below agent.run; above the desktop and the backends).

Owns: target evidence (evidence.py: describe and find; model.py: its typed form; the window list and
the accessibility tree it reads come from sandbox.atspi), the pixel and text finder (locate.py), the
comparisons of a target's neighbourhood and window with the recording (alike.py; what changed is
agent.desktop.change's), the finder with waiting and the replay constants (finder.py), what the app's
tree says of an action's effect, and element marks (marks.py: numbered on the frame, resolved again at
action time). Imports nothing from agent.run, agent.flow or agent.replay: the drivers
(replay, the flow cache, the agent loop) call it.
"""
