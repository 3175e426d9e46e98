"""Evaluation: how well a model grounds through vlagent's own preprocessing, prompt and constrained
decoding (`vlagent eval grounding DATASET`). Owns the ScreenSpot-layout reader (dataset.py), the
evaluation and its report (grounding.py), a scripted oracle backend for CI (oracle.py) and the
builder of the shipped set from real apps (build_set.py). Uses backends, actions and the run's
prompt rendering; nothing below imports it."""
