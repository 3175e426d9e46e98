"""The screen and the input of one display: the Desktop interface (base.py), its X11 implementation
with mss and pyautogui (x11.py; nothing else touches pyautogui), typing by keysym for text pyautogui
drops (keysym_typing.py), and the probe that tells which window will receive an input and whether a
terminal is behind it (probe.py, for the one gate in actions/gate.py), and the one change detector
(change.py: did the screen change, a blinking caret aside). Below targets, run and the drivers."""
