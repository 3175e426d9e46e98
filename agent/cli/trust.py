"""`vlagent trust PATH...`: a person read these trace folders and lets their tasks run setup and
command checks here (agent.trust signs their task.yaml with this machine's key)."""
from __future__ import annotations

from pathlib import Path

import click

from agent.cli.common import usage_errors


@click.command("trust")
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
def trust(paths):
    """Trust the trace folders PATH...: what their task.yaml runs (setup steps, command checks) is
    printed, then the file is signed with this machine's key. Editing it later undoes the trust."""
    from agent import trust as trusting
    from agent.errors import VlagentError
    from agent.task import load_task

    with usage_errors():
        for path in paths:
            if not (path / "task.yaml").is_file():
                raise VlagentError(f"{path}: no task.yaml to trust")
            task = load_task(path / "task.yaml")
            runs = [" ".join(s.launch or s.run) for s in task.setup if s.launch or s.run]
            runs += [c.command if isinstance(c.command, str) else " ".join(c.command)
                     for c in task.success if c.kind == "command"]
            trusting.sign(path)
            click.echo(f"{path}: trusted; it runs: " + ("; ".join(r[:100] for r in runs) or "nothing"))
