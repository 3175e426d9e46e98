"""`vlagent report`: an HTML report from traces, or merged from shards."""
from __future__ import annotations

from pathlib import Path

import click

from agent.cli.common import UsageError, usage_errors
from agent.report.build import build_report, find_traces, merge_reports


@click.command(help="Build an HTML report (viewable offline) from TRACE folders, or folders holding them.")
@click.argument("traces", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder.")
@click.option("--merge", is_flag=True, help="Join shards: the inputs are folders holding report.json and JUnit *.xml files.")
@click.option("--title", default=None, help="Title of the summary page.")
def report(traces, out, merge, title):
    if merge:
        with usage_errors():
            index = merge_reports(list(traces), out, title=title or "vlagent report (merged)")
        junit = out / "junit.xml"
        click.echo(f"merged report: {index}" + (f"; JUnit: {junit}" if junit.exists() else ""))
        return
    found = find_traces(list(traces))
    if not found:
        raise UsageError(f"no traces (folders with steps.jsonl) under {', '.join(map(str, traces))}")
    index = build_report(found, out, title=title or "vlagent report")
    click.echo(f"report of {len(found)} trace(s): {index}")
