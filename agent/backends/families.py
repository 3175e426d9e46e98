"""Model families: GUI fine-tunes of Qwen3-VL-2B, each with its own prompt and reply format.

The loop, the history and the parser speak one format, Qwen3-VL's native `computer_use` tool call
with coordinates on 0..1000. A family translates at the backend's edge:
- `adapt(messages, policy)`: the native chat -> the family's prompt (its system prompt, where the
  instruction goes, text before or after the screenshot, earlier replies in its format);
- `grammar(policy)`: EBNF of the family's replies the policy can accept (decoding is constrained
  to it; `max_reply_tokens` bounds every such reply);
- `to_native(reply)`: the family's reply -> a native tool call (coordinates rescaled), which the
  loop parses and checks as always. A reply with no native equivalent (a phone's Home button)
  becomes text the parser rejects with the reason.

| format | model | reply | coordinates | prompt |
|---|---|---|---|---|
| qwen3-vl | Qwen/Qwen3-VL-2B-Instruct | `<tool_call>{"name": "computer_use", ...}</tool_call>` | 0..1000 | tools in the system turn, image then text |
| gui-owl-1.5 | mPLUG/GUI-Owl-1.5-2B-Instruct | `Action: ...` line, then the same tool call | 0..1000 | GUI-Owl's PC system prompt; instruction text then image |
| mai-ui | Tongyi-MAI/MAI-UI-2B | `<tool_call>{"name": "mobile_use", ...}</tool_call>` (click, drag, swipe, system_button, ...) | 0..999 | MAI-UI's system prompt (no-thinking variant); text then image |
| ui-venus-1.5 | inclusionAI/UI-Venus-1.5-2B | `<think>..</think><action>Click(box=(x,y))</action><conclusion>..</conclusion>` | 0..1000 | Venus' user-turn template; text then image |

Sources: X-PLUG/MobileAgent (Mobile-Agent-v3.5/computer_use/utils.py), Tongyi-MAI/MAI-UI
(src/prompt.py, SCALE_FACTOR 999), inclusionAI/UI-Venus (models/navigation/utils.py,
Venus_framework: 1000x1000 normalised), ZJU-REAL/ClawGUI's evaluation adapters.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from actions.policy import Policy
from agent.backends.grammar import (CLOSE, MAX_REL, OPEN, SPAN_TOKEN_CHARS, UTF8_MAX_BYTES, Span, Spec, lit,
                                    max_reply_bytes, reply_grammar, text_bound, uint_le)
from agent.errors import VlagentError

PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "families"
SCROLL_PX = 500  # a swipe or a Scroll(direction) without an amount: about a screenful
THOUGHT_CHARS = 160  # free text a family writes before its action (Action: line, <think>)
CONCLUSION_CHARS = 80


def span_bytes(max_chars: int) -> int:
    """The longest a bounded free-text span can get (its last token may pass the bound)."""
    return UTF8_MAX_BYTES * (max_chars + SPAN_TOKEN_CHARS)


@cache
def _prompt(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8")


def tool_json(policy: Policy | None) -> str:
    """Qwen's computer_use tool (prompts/computer_use.json) with the policy's actions only."""
    return _tool_json(tuple(sorted((policy or Policy()).actions)))


@cache
def _tool_json(allowed: tuple[str, ...]) -> str:
    tool = json.loads((PROMPTS.parent / "computer_use.json").read_text(encoding="utf-8"))
    params = tool["function"]["parameters"]["properties"]
    params["action"]["enum"] = [a for a in params["action"]["enum"] if a in allowed]
    if "ask_user" not in allowed:  # nobody to answer: the question is not suggested either
        params["action"]["description"] = "\n".join(
            line for line in params["action"]["description"].split("\n") if not line.startswith("* `ask_user`"))
    return json.dumps(tool, ensure_ascii=False)


def _without(prompt: str, marker: str, policy: Policy | None, action: str) -> str:
    """A family's prompt without the lines that offer `action` (holding `marker`) when the policy does not allow it."""
    if action in (policy or Policy()).actions:
        return prompt
    return "\n".join(line for line in prompt.split("\n") if marker not in line)


def _native(args: dict) -> str:
    return OPEN[: OPEN.index("{")] + json.dumps({"name": "computer_use", "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def _refuse(why: str) -> str:
    """A reply the native parser rejects with `why` (it is not a tool call)."""
    return f"(no native action) {why}"


def _rescale(point, scale: int) -> list[float]:
    """A family's point -> native 0..1000 (a 0..999 family's 999 is the far edge, as its authors map
    it). Kept to 3 decimals, not rounded to whole units: on a 2560 px screen a unit is 2.56 px."""
    out = []
    for v in point:
        r = min(float(MAX_REL), max(0.0, round(float(v) * MAX_REL / scale, 3)))
        out.append(int(r) if r.is_integer() else r)
    return out


def _unscale(point, scale: int) -> list[int]:
    return [min(scale, max(0, round(float(v) * scale / MAX_REL))) for v in point]


def _text_parts(content: list[dict]) -> tuple[list[dict], list[dict]]:
    return [p for p in content if p.get("type") == "image"], [p for p in content if p.get("type") != "image"]


def _native_args(reply: str) -> dict | None:
    """The arguments of a native reply (history turns), or None when it holds no valid action."""
    from actions.parse import ParseError, parse_action
    from actions.schema import to_json

    try:
        return to_json(parse_action(reply))
    except ParseError:
        return None


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    hub_ids: tuple[str, ...]  # published checkpoints (recognised by name)
    scale: int = MAX_REL  # the family's coordinate range: 0..scale
    text_first: bool = False  # the instruction text before the screenshot in a user turn

    # -- prompt ------------------------------------------------------------------------------------
    def adapt(self, messages: list[dict], policy: Policy | None) -> list[dict]:
        """The native chat in this family's prompt. The native chat is: system (tools), user (the task
        and older steps as text), then (screenshot + observation, reply) turns, then the current one."""
        out = []
        for m in messages:
            content = m["content"]
            if m["role"] == "system":
                out.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt(policy)}]})
            elif m["role"] == "assistant":
                text = "".join(p.get("text", "") for p in content)
                out.append({"role": "assistant", "content": [{"type": "text", "text": self.history_reply(text)}]})
            else:
                images, texts = _text_parts(content)
                out.append({"role": "user", "content": texts + images if self.text_first else images + texts})
        return out

    def system_prompt(self, policy: Policy | None) -> str:
        raise NotImplementedError

    def history_reply(self, native: str) -> str:
        """An earlier native reply, as this family would have written it."""
        args = _native_args(native)
        return self.from_native(args) if args is not None else native

    # -- replies -----------------------------------------------------------------------------------
    def from_native(self, args: dict) -> str:
        raise NotImplementedError

    def to_native(self, reply: str) -> str:
        raise NotImplementedError

    def grammar(self, policy: Policy | None) -> str:
        raise NotImplementedError

    def max_reply_tokens(self, policy: Policy | None) -> int:
        raise NotImplementedError

    def matcher(self, constrainer, policy: Policy | None):
        """A fresh grammar matcher for one reply of this family under `policy` (the text of a
        `"text": "` field bounded as in native replies)."""
        return constrainer.ebnf_matcher(self.grammar(policy), text_bound(policy))


# ------------------------------------------------------------------------------------ Qwen3-VL
class Qwen3VL(Family):
    def adapt(self, messages, policy):
        return messages

    def history_reply(self, native):
        return native

    def from_native(self, args):
        return _native(args)

    def to_native(self, reply):
        return reply

    def grammar(self, policy):
        return reply_grammar(policy)

    def max_reply_tokens(self, policy):
        return max_reply_bytes(policy) + 1  # + the stop token

    def matcher(self, constrainer, policy):
        return constrainer.matcher(policy)  # with the exact text bound (ReplyMatcher)


# ---------------------------------------------------------------------------------- GUI-Owl 1.5
ACTION_LINE = "Action: "
OWL_ASK = "interact"  # GUI-Owl 1.5's PC tool: "Resolve the blocking window by interacting with the user" (its ask_user)


OWL_SPANS = (Span(ACTION_LINE.encode(), ord("\n"), THOUGHT_CHARS),)


class GuiOwl(Family):
    """Qwen's tool call after a one-line `Action:` summary; GUI-Owl's own PC system prompt."""

    def system_prompt(self, policy):
        tools = tool_json(policy).replace("ask_user", OWL_ASK)
        return _prompt("gui_owl.md").replace("{tools}", f"<tools>\n{tools}\n</tools>")

    def from_native(self, args):
        reply = f"{ACTION_LINE}{args.get('action', '').replace('_', ' ')}\n{_native(args)}"
        return reply.replace('"action": "ask_user"', f'"action": "{OWL_ASK}"') if args.get("action") == "ask_user" else reply

    def to_native(self, reply):
        """The native parser takes text before the tool call; GUI-Owl's `interact` is ask_user."""
        at = reply.find("<tool_call>")  # (a quote inside the JSON's strings is escaped: only the key matches)
        return reply if at < 0 else reply[:at] + reply[at:].replace(f'"action": "{OWL_ASK}"', '"action": "ask_user"', 1)

    def grammar(self, policy):
        native = reply_grammar(policy).replace("root ::= ", "native ::= ", 1).replace('\\"ask_user\\"', f'\\"{OWL_ASK}\\"')
        return (f'root ::= {lit(ACTION_LINE)} summary "\\n" native\n'
                f'summary ::= [^\\n<"\\\\]*\n' + native)  # bounded while decoding (SPANS)

    def max_reply_tokens(self, policy):
        text = UTF8_MAX_BYTES * SPAN_TOKEN_CHARS  # the tool call's text may pass its bound by a token
        return max_reply_bytes(policy) + text + len(ACTION_LINE) + 1 + span_bytes(THOUGHT_CHARS) + 1

    def matcher(self, constrainer, policy):
        """The summary line bounded while decoding; the tool call's text as in native replies."""
        text = Span(b'"text": "', ord('"'), text_bound(policy), escape=ord("\\"))
        return constrainer.span_matcher(self.grammar(policy), (*OWL_SPANS, text))


# ---------------------------------------------------------------------------------------- MAI-UI
MAI_OPEN = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": '
MAI_BUTTONS = {"enter": ["enter"], "back": ["alt", "left"]}  # home, menu: no desktop equivalent


class MaiUi(Family):
    """MAI-UI's mobile_use tool call (its no-thinking prompt), coordinates on 0..999."""

    def system_prompt(self, policy):
        return _without(_prompt("mai_ui.md"), '"ask_user"', policy, "ask_user")

    def from_native(self, args):
        a, s = args.get("action"), self.scale
        out: dict = {}
        if a in ("left_click", "double_click") and "coordinate" in args:
            out = {"action": "click" if a == "left_click" else "double_click", "coordinate": _unscale(args["coordinate"], s)}
        elif a == "left_click_drag":
            out = {"action": "drag", "start_coordinate": _unscale(args.get("start_coordinate", args["coordinate"]), s),
                   "end_coordinate": _unscale(args["coordinate"], s)}
        elif a in ("scroll", "hscroll"):  # the wheel down is a finger swiping up
            dirs = ("up", "down") if a == "scroll" else ("left", "right")
            out = {"action": "swipe", "direction": dirs[0] if args["pixels"] < 0 else dirs[1]}
            if "coordinate" in args:
                out["coordinate"] = _unscale(args["coordinate"], s)
        elif a == "key" and args.get("keys") == ["enter"]:
            out = {"action": "system_button", "button": "enter"}
        elif a in ("type", "answer", "ask_user"):
            out = {"action": a, "text": args["text"]}
        elif a == "wait":
            out = {"action": "wait"}
        elif a == "terminate":
            out = {"action": "terminate", "status": "success" if args["status"] == "success" else "fail"}
        else:
            return _native(args)
        return MAI_OPEN[: MAI_OPEN.index("{")] + json.dumps({"name": "mobile_use", "arguments": out}, ensure_ascii=False) + "\n</tool_call>"

    def to_native(self, reply):
        m = re.search(r"<tool_call>(.*?)</tool_call>", reply, re.S)
        if not m:  # the grounding prompt's answer: <answer>{"coordinate": [x, y]}</answer>
            g = re.search(r"<answer>\s*(\{.*?\})\s*</answer>", reply, re.S)
            try:
                point = json.loads(g.group(1))["coordinate"] if g else None
                return _native({"action": "left_click", "coordinate": _rescale(point[:2], self.scale)}) if point else reply
            except (ValueError, KeyError, TypeError, IndexError):
                return reply
        try:
            call = json.loads(m.group(1))
            args = call["arguments"]
            a = args["action"]
        except (ValueError, KeyError, TypeError):
            return reply
        s = self.scale
        try:
            if a in ("click", "double_click"):
                native = {"action": "left_click" if a == "click" else "double_click", "coordinate": _rescale(args["coordinate"], s)}
            elif a == "long_press":
                return _refuse("long_press has no desktop equivalent")
            elif a == "drag":
                native = {"action": "left_click_drag", "start_coordinate": _rescale(args["start_coordinate"], s),
                          "coordinate": _rescale(args["end_coordinate"], s)}
            elif a == "swipe":
                # A finger swiping up moves the content up: the wheel scrolls down.
                sign = {"up": -1, "down": 1, "left": -1, "right": 1}[args["direction"]]
                native = {"action": "hscroll" if args["direction"] in ("left", "right") else "scroll", "pixels": sign * SCROLL_PX}
                if "coordinate" in args:
                    native["coordinate"] = _rescale(args["coordinate"], s)
            elif a == "system_button":
                keys = MAI_BUTTONS.get(args["button"])
                if keys is None:
                    return _refuse(f"the {args['button']} button has no desktop equivalent")
                native = {"action": "key", "keys": keys}
            elif a in ("type", "answer"):
                native = {"action": a, "text": args["text"]}
            elif a in ("ask_user", "INFO"):  # MAI-UI: INFO "asks the user for more info", as ask_user
                native = {"action": "ask_user", "text": args["text"]}
            elif a == "wait":
                native = {"action": "wait", "time": 1}
            elif a == "terminate":
                native = {"action": "terminate", "status": "success" if args["status"] == "success" else "failure"}
            elif a == "open":
                return _refuse("opening apps by name is not supported")
            else:
                return reply
        except (KeyError, TypeError, ValueError):
            return reply
        return _native(native)

    def grammar(self, policy):
        spec = Spec.of(policy)
        acts, allowed = [], set(spec.actions)
        pt = '"[" rel ", " rel "]"'
        text = '"\\"\\""' if spec.empty_text else '"\\"" tchar* "\\""'
        if "left_click" in allowed:
            acts.append(f'"\\"click\\", \\"coordinate\\": " {pt}')
        if "double_click" in allowed:
            acts.append(f'"\\"double_click\\", \\"coordinate\\": " {pt}')
        if "left_click_drag" in allowed:
            acts.append(f'"\\"drag\\", \\"start_coordinate\\": " {pt} ", \\"end_coordinate\\": " {pt}')
        if "scroll" in allowed:
            acts.append(f'"\\"swipe\\", \\"direction\\": " ("\\"up\\"" | "\\"down\\"") (", \\"coordinate\\": " {pt})?')
        if "hscroll" in allowed:
            acts.append(f'"\\"swipe\\", \\"direction\\": " ("\\"left\\"" | "\\"right\\"") (", \\"coordinate\\": " {pt})?')
        if "key" in allowed and ("enter",) in spec.chords:
            acts.append('"\\"system_button\\", \\"button\\": \\"enter\\""')
        for a in ("type", "answer"):
            if a in allowed:
                acts.append(f'"\\"{a}\\", \\"text\\": " {text}')
        if "ask_user" in allowed:
            acts.append('"\\"ask_user\\", \\"text\\": \\"" tchar+ "\\""')
        if "wait" in allowed:
            acts.append('"\\"wait\\""')
        if "terminate" in allowed:
            acts.append('"\\"terminate\\", \\"status\\": " ("\\"success\\"" | "\\"fail\\"")')
        if not acts:
            raise VlagentError("the task's policy leaves no action MAI-UI's format can express")
        native = reply_grammar(policy)
        tchar = next(line for line in native.splitlines() if line.startswith("tchar ::="))
        return "\n".join([f"root ::= {lit(MAI_OPEN)} action {lit(CLOSE)}", "action ::= " + " | ".join(f"({a})" for a in acts),
                          f"rel ::= {uint_le(self.scale)}", tchar]) + "\n"

    def max_reply_tokens(self, policy):
        return max_reply_bytes(policy) + 64  # MAI's longest bodies are no longer than the native ones + its tags


# ---------------------------------------------------------------------------------- UI-Venus 1.5
VENUS_SCROLL = {"down": -SCROLL_PX, "up": SCROLL_PX}
VENUS_SPANS = (Span(b"<think>", ord("<"), THOUGHT_CHARS), Span(b"<conclusion>", ord("<"), CONCLUSION_CHARS))


def _py_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _py_unstr(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), body)


class UiVenus(Family):
    """UI-Venus 1.5's <think>/<action>/<conclusion> reply with Click(box=(x,y)) style actions."""

    def adapt(self, messages, policy):
        out = super().adapt(messages, policy)
        if out and out[0]["role"] == "system":  # Venus puts its template in the first user turn
            system = out.pop(0)["content"][0]["text"]
            first = next((m for m in out if m["role"] == "user"), None)
            if first is not None:
                first["content"] = [{"type": "text", "text": system + "\n"}] + first["content"]
        return out

    def system_prompt(self, policy):
        return _without(_prompt("ui_venus.md"), "CallUser(", policy, "ask_user")

    def from_native(self, args):
        a = args.get("action")
        pt = lambda p: f"({round(p[0])},{round(p[1])})"  # noqa: E731
        if a == "left_click" and "coordinate" in args:
            act = f"Click(box={pt(args['coordinate'])})"
        elif a == "double_click" and "coordinate" in args:
            act = f"DoubleClick(box={pt(args['coordinate'])})"
        elif a == "mouse_move":
            act = f"Hover(box={pt(args['coordinate'])})"
        elif a == "left_click_drag":
            act = f"Drag(start={pt(args.get('start_coordinate', args['coordinate']))}, end={pt(args['coordinate'])})"
        elif a == "scroll":
            act = f"Scroll(direction='{'down' if args['pixels'] < 0 else 'up'}')"
        elif a == "type":
            act = f"Type(content={_py_str(args['text'])})"
        elif a == "key":
            act = "PressEnter()" if args["keys"] == ["enter"] else f"Hotkey(keys=[{', '.join(_py_str(k) for k in args['keys'])}])"
        elif a == "wait":
            act = "Wait()"
        elif a == "terminate" and args["status"] == "success":
            act = "Finished(content='')"
        elif a == "answer":  # Venus 1.5: Finished "optionally reports details in content"
            act = f"Finished(content={_py_str(args['text'])})"
        elif a == "ask_user":  # Venus 1.5: CallUser "requests additional information" from the user
            act = f"CallUser(content={_py_str(args['text'])})"
        else:
            return _native(args)
        return f"<think></think>\n<action>{act}</action>\n<conclusion></conclusion>"

    def to_native(self, reply):
        m = re.search(r"<action>(.*?)</action>", reply, re.S)
        if not m:  # the grounding prompt's answer: a bare [x,y] (or a box [x1,y1,x2,y2]: its centre)
            nums = re.fullmatch(r"\s*\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*(?:,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*)?\]\s*", reply)
            if not nums:
                return reply
            v = [float(x) for x in nums.groups() if x is not None]
            if v[:2] == [-1, -1]:
                return _refuse("the model says the target is not on the screen ([-1,-1])")
            point = v if len(v) == 2 else [(v[0] + v[2]) / 2, (v[1] + v[3]) / 2]
            return _native({"action": "left_click", "coordinate": _rescale(point, self.scale)})
        act = m.group(1).strip()
        pt = r"\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)"
        quoted = r"'((?:[^'\\]|\\.)*)'"
        s = self.scale
        if g := re.fullmatch(rf"(Click|DoubleClick|Hover|LongPress)\(box={pt}\)", act):
            if g.group(1) == "LongPress":
                return _refuse("LongPress has no desktop equivalent")
            kind = {"Click": "left_click", "DoubleClick": "double_click", "Hover": "mouse_move"}[g.group(1)]
            return _native({"action": kind, "coordinate": _rescale(g.group(2, 3), s)})
        if g := re.fullmatch(rf"Drag\(start={pt},\s*end={pt}\)", act):
            return _native({"action": "left_click_drag", "start_coordinate": _rescale(g.group(1, 2), s),
                            "coordinate": _rescale(g.group(3, 4), s)})
        if g := re.fullmatch(r"Scroll\(direction='(up|down)'\)", act):
            return _native({"action": "scroll", "pixels": VENUS_SCROLL[g.group(1)]})
        if g := re.fullmatch(rf"Type\(content={quoted}\)", act, re.S):
            return _native({"action": "type", "text": _py_unstr(g.group(1))})
        if g := re.fullmatch(rf"CallUser\(content={quoted}\)", act, re.S):
            return _native({"action": "ask_user", "text": _py_unstr(g.group(1))})
        if g := re.fullmatch(r"Hotkey\(keys=\[(.*)\]\)", act):
            return _native({"action": "key", "keys": [k.strip().strip("'\"") for k in g.group(1).split(",") if k.strip()]})
        if act == "PressEnter()":
            return _native({"action": "key", "keys": ["enter"]})
        if act == "Wait()":
            return _native({"action": "wait", "time": 1})
        if (g := re.fullmatch(rf"Finished\(content={quoted}\)", act, re.S)) and g.group(1):
            return _native({"action": "answer", "text": _py_unstr(g.group(1))})
        if g or act == "Finished()":
            return _native({"action": "terminate", "status": "success"})
        if act in ("PressBack()", "PressHome()", "PressRecent()") or act.startswith("Launch("):
            return _refuse(f"{act} has no desktop equivalent")
        return reply

    def grammar(self, policy):
        spec = Spec.of(policy)
        allowed, acts = set(spec.actions), []
        pt = '"(" rel "," rel ")"'
        text = "\"''\"" if spec.empty_text else "\"'\" vchar* \"'\""  # bounded while decoding
        if "left_click" in allowed:
            acts.append(f'"Click(box=" {pt} ")"')
        if "double_click" in allowed:
            acts.append(f'"DoubleClick(box=" {pt} ")"')
        if "mouse_move" in allowed:
            acts.append(f'"Hover(box=" {pt} ")"')
        if "left_click_drag" in allowed:
            acts.append(f'"Drag(start=" {pt} ", end=" {pt} ")"')
        if "scroll" in allowed:
            acts.append("\"Scroll(direction='\" (\"up\" | \"down\") \"')\"")
        if "type" in allowed:
            acts.append(f'"Type(content=" {text} ")"')
        if "ask_user" in allowed and not spec.empty_text:
            acts.append('"CallUser(content=\'" vchar+ "\')"')
        if "key" in allowed:
            if ("enter",) in spec.chords:
                acts.append('"PressEnter()"')
            chords = [c for c in spec.chords if c != ("enter",)]
            if chords:
                acts.append('"Hotkey(keys=[" chord "])"')
        if "wait" in allowed:
            acts.append('"Wait()"')
        if "answer" in allowed and not spec.empty_text:  # an answer in Finished's content; empty: terminate
            acts.append(f"\"Finished(content='\" vchar{'*' if 'terminate' in allowed else '+'} \"')\"")
        elif "terminate" in allowed:
            acts.append("\"Finished(content='')\"")
        if not acts:
            raise VlagentError("the task's policy leaves no action UI-Venus' format can express")
        rules = [
            'root ::= "<think>" thought "</think>\\n<action>" action "</action>\\n<conclusion>" conclusion "</conclusion>"',
            "thought ::= [^<\\\\\"]*",  # bounded while decoding (VENUS_SPANS)
            "conclusion ::= [^<\\\\\"]*",
            "action ::= " + " | ".join(f"({a})" for a in acts),
            f"rel ::= {uint_le(self.scale)}",
            "vchar ::= [^'\\\\\\n\\r\\u0000-\\u001f] | \"\\\\'\" | \"\\\\\\\\\"",
        ]
        if "key" in allowed:
            chords = [c for c in spec.chords if c != ("enter",)]
            if chords:
                rules.append("chord ::= " + " | ".join(lit(", ".join(_py_str(k) for k in c)) for c in chords))
        return "\n".join(rules) + "\n"

    def max_reply_tokens(self, policy):
        spec = Spec.of(policy)
        longest_chord = max((len(", ".join(_py_str(k) for k in c)) for c in spec.chords), default=0)
        action = max(len("Drag(start=(1000,1000), end=(1000,1000))"), len("Finished(content='')") + span_bytes(text_bound(policy)),
                     len("Hotkey(keys=[])") + longest_chord)
        tags = len("<think></think>\n<action></action>\n<conclusion></conclusion>")
        return tags + span_bytes(THOUGHT_CHARS) + span_bytes(CONCLUSION_CHARS) + action + 1

    def matcher(self, constrainer, policy):
        """The thought, the conclusion and typed text bounded while decoding."""
        text = Span(b"content='", ord("'"), text_bound(policy), escape=ord("\\"))
        return constrainer.span_matcher(self.grammar(policy), (*VENUS_SPANS, text))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Qwen3VL("qwen3-vl", "Qwen3-VL (native computer_use)", ("Qwen/Qwen3-VL-2B-Instruct",)),
    GuiOwl("gui-owl-1.5", "GUI-Owl 1.5", ("mPLUG/GUI-Owl-1.5-2B-Instruct",), text_first=True),
    MaiUi("mai-ui", "MAI-UI", ("Tongyi-MAI/MAI-UI-2B",), scale=999, text_first=True),
    UiVenus("ui-venus-1.5", "UI-Venus 1.5", ("inclusionAI/UI-Venus-1.5-2B",), text_first=True),
)}
NATIVE = FAMILIES["qwen3-vl"]
# Name fragments (lower case, without separators) that identify a family in a hub id, a folder
# name or a config's _name_or_path.
MARKERS = (("guiowl", "gui-owl-1.5"), ("maiui", "mai-ui"), ("uivenus", "ui-venus-1.5"))


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise VlagentError(f"unknown format {name!r}; choose one of {', '.join(FAMILIES)}") from None


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def detect(model: str, folder: str | Path | None = None) -> Family:
    """The family of a checkpoint: from the hub id or folder name, else from its config.json
    (`_name_or_path`, `vlagent_format`), else Qwen3-VL's native format."""
    names = [str(model)]
    if folder is not None:
        folder = Path(folder)
        names.append(str(folder))
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        if isinstance(config.get("vlagent_format"), str):
            return family(config["vlagent_format"])
        names.append(str(config.get("_name_or_path", "")))
    for name in names:
        squashed = _squash(name.replace("models--", "").replace("--", "/"))
        for marker, fam in MARKERS:
            if marker in squashed:
                return FAMILIES[fam]
    return NATIVE
