"""`python -m agent.cli` is `vlagent`."""
from agent.cli import main

main()
