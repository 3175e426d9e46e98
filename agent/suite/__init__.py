"""Unattended suites (`vlagent suite`): discovery and shards (items.py), one child process per item
with a deadline and a clean-up (child.py), the scheduler with retries (runner.py), progress on the
terminal (progress.py) and JUnit XML (junit.py). Above the drivers; below the CLI."""
