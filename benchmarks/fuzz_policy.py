"""Fuzz the reply checker (`vlagent check-action`'s own function, actions.check_reply) with
adversarial replies from benchmarks/fuzz_oracle.py (which imports nothing of the project) and count:

    crashes              an exception other than a rejection, or a rejection that is the safety net
                         catching an internal error ("could not be checked")
    hangs                a reply that takes longer than --budget-s to check
    forbidden_accepted   a reply the oracle says must be rejected, accepted
    legitimate_rejected  a reply the oracle says must be accepted (accents, CJK, emoji, ordinary
                         shortcuts, clicks), rejected

Then the gate (actions.gate.check, the one function every proposer calls) with each proposer's way
of making an action (a model's raw reply; a replayed trace step and a flow cache entry, both dicts
validated by the schema; a fall-back model's grounding under a one-kind policy) over a fake desktop
probe: a terminal or a python3 REPL beside a form, the focus on either, windows that cannot be told.
The oracle computes where each pointer action lands (both ends of a drag) and which window gets it.
Secrets: this run's policy declares PASSWORD; "gate_other_run" checks `{secret:PASSWORD}` against
another run's policy in the same process (it declares only OTHER), which must refuse it.

Targets: 0, 0, 0, 0.   python benchmarks/fuzz_policy.py [--n 12000] [--gate-n 8000] [--seed 13] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fuzz_oracle  # noqa: E402  (the oracle: standard library only)
from actions import Allow, Focus, ParseError, Policy, PolicyError, check_reply  # noqa: E402
from actions.policy import TextPattern  # noqa: E402

SAFETY_NET = "the reply could not be checked"


class Hang(Exception):
    pass


def policies() -> dict:
    terminal = Focus(wm_class=("xterm", "XTerm"), processes=("xterm", "bash"), title="user@host: ~")
    app = Focus(wm_class=("form", "Tk"), processes=("python3",), title="Registration")
    return {
        "app": (Policy(), lambda: app),
        "terminal": (Policy(), lambda: terminal),
        "allow_text": (Policy(Allow(text=[*fuzz_oracle.ALLOWED_LITERALS, TextPattern(pattern=r"[a-z]+@example\.com")])),
                       lambda: app),
        "long_text": (Policy(Allow(max_text_len=100_000, deny_text=[r"(a+)+$", r"(x+x+)+y", r"(\w+\s?)+$!"])), lambda: app),
    }


class FakeProbe:
    """The gate's probe over fuzz_oracle's layouts (actions.gate.Probe)."""

    def __init__(self, layout: str):
        from actions import Focus

        self.layout = layout
        repl = layout == "split_repl"
        self.terminal = Focus(wm_class=("notes", "Notes"), processes=("xterm", "python3"), pty=True, repl="python3") if repl \
            else Focus(wm_class=("xterm", "XTerm"), processes=("xterm", "bash"), title="user@host: ~")
        self.form = Focus(wm_class=("form", "Tk"), processes=("python3",), title="Registration")

    def size(self):
        return fuzz_oracle.SCREEN

    def position(self):
        return (900, 400)

    def window_at(self, x, y):
        if self.layout == "unknown" and y < fuzz_oracle.UNKNOWN_BOTTOM:
            return None
        return self.terminal if x < fuzz_oracle.TERMINAL_RIGHT else self.form

    def focused_window(self):
        return {"focus_terminal": self.terminal, "unknown": None}.get(self.layout, self.form)


def gate_outcome(proposer: str, args: dict, probe, policy, before: bool = False) -> tuple[str, str]:
    """Propose `args` the way `proposer` does and pass it through the gate. `before`: the checks each
    proposer had before the gate (the model: the policy with a focus-only probe; replay, cache and
    fall-back: the policy alone), for comparison."""
    from actions import ACTION_ADAPTER, gate

    try:
        if before:
            action = ACTION_ADAPTER.validate_python(args)
            if proposer == "model":
                policy.check(action, probe.focused_window)
            else:
                policy.check(action)
        elif proposer == "model":
            reply = "<tool_call>" + json.dumps({"name": "computer_use", "arguments": args}) + "</tool_call>"
            gate.check_reply(reply, probe, policy)
        elif proposer in ("replay", "cache"):  # a trace step / a cache entry: a dict the schema validates
            gate.check(ACTION_ADAPTER.validate_python(args), probe, policy)
        else:  # the fall-back model grounds one kind of action, then the gate judges it for the task
            only = Policy(Allow(actions=[args["action"]]))
            reply = "<tool_call>" + json.dumps({"name": "computer_use", "arguments": args}) + "</tool_call>"
            grounded = check_reply(reply, only)
            gate.check(grounded, probe, policy)
        return "accept", ""
    except (ParseError, PolicyError) as e:
        return "reject", str(e)
    except Exception as e:  # noqa: BLE001 (counting crashes is the point)
        return "crash", f"{type(e).__name__}: {e}"


def run_gate(n: int, seed: int, before: bool = False) -> dict:
    import random

    probes = {layout: FakeProbe(layout) for layout in fuzz_oracle.GATE_LAYOUTS}
    # This run's task declares PASSWORD; another run in the same process (the console, the pytest
    # plugin) declares only OTHER and must not be able to type PASSWORD.
    policy, other = Policy(secrets={"PASSWORD"}), Policy(secrets={"OTHER"})
    counts = {"actions": 0, "crashes": 0, "forbidden_accepted": 0, "legitimate_rejected": 0}
    by = {}
    examples = []
    times = []
    for category, proposer, layout, args, expect in fuzz_oracle.gate_cases(random.Random(seed + 1), n):
        t0 = time.perf_counter()
        outcome, detail = gate_outcome(proposer, args, probes[layout], other if category == "gate_other_run" else policy,
                                       before)
        times.append(time.perf_counter() - t0)
        counts["actions"] += 1
        row = by.setdefault(f"{proposer}/{category}", {"actions": 0, "accepted": 0, "failures": 0})
        row["actions"] += 1
        row["accepted"] += outcome == "accept"
        failure = "crashes" if outcome == "crash" else None
        if failure is None and outcome != expect:
            failure = "forbidden_accepted" if expect == "reject" else "legitimate_rejected"
        if failure:
            counts[failure] += 1
            row["failures"] += 1
            if len(examples) < 15:
                examples.append({"kind": failure, "proposer": proposer, "layout": layout, "action": args, "detail": detail[:200]})
    return {**counts, "by_proposer_and_case": dict(sorted(by.items())), "examples": examples,
            "check_ms": {"median": round(statistics.median(times) * 1e3, 3), "max": round(max(times) * 1e3, 3)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12_000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--budget-s", type=float, default=2.0, help="a check taking longer is a hang")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--gate-n", type=int, default=8_000, help="actions through the gate, over all proposers")
    args = ap.parse_args()

    ctx = policies()

    def on_alarm(signum, frame):
        raise Hang()
    signal.signal(signal.SIGALRM, on_alarm)

    counts = {"replies": 0, "crashes": 0, "hangs": 0, "forbidden_accepted": 0, "legitimate_rejected": 0}
    by_category: dict[str, dict[str, int]] = {}
    examples: dict[str, list] = {k: [] for k in counts if k != "replies"}
    times = []
    t_start = time.perf_counter()
    for category, reply, context, expect in fuzz_oracle.cases(args.seed, args.n):
        policy, focus = ctx[context]
        cat = by_category.setdefault(category, {"replies": 0, "accepted": 0, "failures": 0})
        counts["replies"] += 1
        cat["replies"] += 1
        outcome, detail = None, ""
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.budget_s)
        try:
            check_reply(reply, policy, focus)
            outcome = "accept"
        except (ParseError, PolicyError) as e:
            outcome, detail = "reject", str(e)
            if detail.startswith(SAFETY_NET):
                outcome = "crash"
        except Hang:
            outcome = "hang"
        except Exception as e:  # noqa: BLE001 (counting crashes is the point)
            outcome, detail = "crash", f"{type(e).__name__}: {e}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        times.append(dt)
        if dt > args.budget_s and outcome != "hang":
            outcome = "hang"
        failure = {"crash": "crashes", "hang": "hangs"}.get(outcome)
        if failure is None and outcome != expect:
            failure = "forbidden_accepted" if expect == "reject" else "legitimate_rejected"
        cat["accepted"] += outcome == "accept"
        if failure:
            counts[failure] += 1
            cat["failures"] += 1
            if len(examples[failure]) < 15:
                examples[failure].append({"category": category, "context": context, "reply": reply[:300], "detail": detail[:200]})
    gate_result = run_gate(args.gate_n, args.seed)
    before = run_gate(args.gate_n, args.seed, before=True)  # the same actions through the checks of before the gate
    gate_result["before_the_gate"] = {k: before[k] for k in ("forbidden_accepted", "legitimate_rejected", "crashes")}
    for k in ("crashes", "forbidden_accepted", "legitimate_rejected"):
        counts[k] += gate_result[k]
    total_s = time.perf_counter() - t_start
    out = {
        **counts,
        "targets": {"crashes": 0, "hangs": 0, "forbidden_accepted": 0, "legitimate_rejected": 0},
        "by_category": by_category,
        "check_ms": {"median": round(statistics.median(times) * 1e3, 3), "p99": round(sorted(times)[int(len(times) * 0.99)] * 1e3, 3),
                     "max": round(max(times) * 1e3, 3)},
        "total_s": round(total_s, 2), "seed": args.seed, "budget_s": args.budget_s,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, python {platform.python_version()}",
        "examples": {k: v for k, v in examples.items() if v},
        "gate": gate_result,
    }
    text = json.dumps(out, indent=1, ensure_ascii=False)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({k: out[k] for k in ("replies", "crashes", "hangs", "forbidden_accepted", "legitimate_rejected",
                                          "check_ms", "total_s")}))
    print("gate", json.dumps({k: gate_result[k] for k in ("actions", "crashes", "forbidden_accepted", "legitimate_rejected",
                                                          "check_ms", "before_the_gate")}))
    for item in gate_result["examples"][:5]:
        print("gate", json.dumps(item, ensure_ascii=False)[:400])
    for kind, items in out["examples"].items():
        for item in items[:5]:
            print(kind, json.dumps(item, ensure_ascii=False)[:400])
    sys.exit(0 if all(counts[k] == 0 for k in out["targets"]) else 1)


if __name__ == "__main__":
    main()
