"""JUnit XML, the format CI systems read: one <testcase> per suite item.

A failed item gets <failure> (or <error> when the run itself broke: status `error`) whose message
is "status: reason"; the trace folder is a property so a CI page links back to it."""
from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

LOG_TAIL_CHARS = 4000  # how much of a child's output goes into <system-out>
ERROR_STATUSES = frozenset({"error"})


def _tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-LOG_TAIL_CHARS:]


def _clean(text: str) -> str:
    """XML 1.0 cannot hold most control characters; a model reply may."""
    return "".join(ch if ch in "\t\n\r" or ord(ch) >= 0x20 else f"\\x{ord(ch):02x}" for ch in text)


def testcase(outcome) -> ET.Element:
    item = outcome.item
    classname = "vlagent." + ("replay" if item.kind == "trace" else "task")
    case = ET.Element("testcase", name=item.name, classname=classname, file=item.rel,
                      time=f"{outcome.duration_s:.3f}")
    props = ET.SubElement(case, "properties")
    for name, value in (("status", outcome.status), ("trace", str(outcome.trace or "")),
                        ("attempts", str(outcome.attempts)), ("steps", str(outcome.steps))):
        ET.SubElement(props, "property", name=name, value=_clean(value))
    message = _clean(f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status)
    if outcome.status == "skipped":
        ET.SubElement(case, "skipped", message=message)
    elif outcome.status != "success":
        tag = "error" if outcome.status in ERROR_STATUSES else "failure"
        el = ET.SubElement(case, tag, message=message, type=outcome.status)
        el.text = message + (f"\ntrace: {outcome.trace}" if outcome.trace else "")
    calls, steps = _flow(outcome.trace)
    if steps:  # a flow: its model calls, and each step (assertions with the model's reason and screen)
        ET.SubElement(props, "property", name="model_calls", value=str(calls))
    out = "\n".join(steps + ([_tail(outcome.log)] if outcome.log else []))
    if out.strip():
        ET.SubElement(case, "system-out").text = _clean(out)
    return case


FLOW_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}


def _flow(trace) -> tuple[int, list[str]]:
    """A flow run's model calls and one line per step, from its result.json (none for other runs)."""
    import json

    try:
        data = json.loads((Path(trace) / "result.json").read_text(encoding="utf-8")) if trace else {}
    except (OSError, ValueError):
        return 0, []
    lines = []
    for f in data.get("flow") or []:
        cache = f" [cache {f['cache']}]" if f.get("cache") else ""
        line = f"{FLOW_MARK.get(f.get('status'), '?')} {f.get('phase')}[{f.get('index')}] {f.get('kind')}: {f.get('text')}{cache}"
        if f.get("reason"):
            line += f"\n    reason: {f['reason']}"
        if f.get("screenshot"):
            line += f"\n    screen: {Path(trace) / f['screenshot']}"
        lines.append(line)
    return int(data.get("model_calls") or 0), lines


def _suite_element(name: str, cases: list[ET.Element]) -> ET.Element:
    counts = {tag: sum(1 for c in cases if c.find(tag) is not None) for tag in ("failure", "error", "skipped")}
    total_s = sum(float(c.get("time", 0)) for c in cases)
    el = ET.Element("testsuite", name=name, tests=str(len(cases)), failures=str(counts["failure"]),
                    errors=str(counts["error"]), skipped=str(counts["skipped"]), time=f"{total_s:.3f}",
                    timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), hostname=socket.gethostname())
    el.extend(cases)
    return el


def _document(suites: list[ET.Element]) -> ET.ElementTree:
    root = ET.Element("testsuites", name="vlagent",
                      tests=str(sum(int(s.get("tests")) for s in suites)),
                      failures=str(sum(int(s.get("failures")) for s in suites)),
                      errors=str(sum(int(s.get("errors")) for s in suites)),
                      skipped=str(sum(int(s.get("skipped", 0)) for s in suites)),
                      time=f"{sum(float(s.get('time', 0)) for s in suites):.3f}")
    root.extend(suites)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(outcomes, path: str | Path, name: str = "vlagent suite") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _document([_suite_element(name, [testcase(o) for o in outcomes])]).write(path, encoding="utf-8", xml_declaration=True)
    return path


def merge_junit(files: list[Path], path: str | Path) -> Path:
    """Join the JUnit files of shards into one: their <testsuite> elements side by side."""
    suites: list[ET.Element] = []
    for f in files:
        root = ET.parse(f).getroot()
        suites.extend([root] if root.tag == "testsuite" else root.findall("testsuite"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _document(suites).write(path, encoding="utf-8", xml_declaration=True)
    return path
