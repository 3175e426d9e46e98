"""A person's part in an attended step (a question answered, an action rejected) is on the report's card."""
from __future__ import annotations

from actions.schema import AskUser, LeftClick
from agent.report.page import card
from agent.trace import Step


def test_the_card_says_who_decided_what_and_after_how_long():
    question = Step(step=1, action=AskUser(action="ask_user", text="Which email?"), screenshot="screens/0001.png",
                    decision={"verdict": "answer", "by": "page", "note": "ada@example.com", "asked": 100.0,
                              "decided": 112.4})
    assert card(question, "img.png", None)["decision"] == "answered by page after 12 s: ada@example.com"
    rejected = Step(step=2, screenshot="screens/0002.png", error="rejected by a person: wrong field",
                    decision={"verdict": "reject", "by": "terminal", "note": "wrong field",
                              "proposed": {"action": "left_click", "coordinate": [10, 10]}, "asked": 5.0, "decided": 8.0})
    assert card(rejected, "img.png", None)["decision"] == "rejected by terminal after 3 s: wrong field"
    plain = Step(step=3, action=LeftClick(action="left_click", coordinate=(5, 5)), screenshot="screens/0003.png")
    assert card(plain, "img.png", None)["decision"] is None


def test_the_page_shows_it(tmp_path):
    from agent.report.build import build_report
    from agent.trace import Result, Trace

    t = Trace(tmp_path / "trace")
    t.write_task("name: asked\ngoal: Ask\n")
    t.add(Step(step=1, action=AskUser(action="ask_user", text="Which email?"),
               decision={"verdict": "unanswered", "by": "timeout", "note": "no answer within 3 s"}))
    t.finish(Result(status="failed", reason="nobody answered", task="asked"))
    build_report([t.folder], tmp_path / "report")
    html = "".join(p.read_text() for p in (tmp_path / "report").rglob("*.html"))
    assert "person: not answered by timeout: no answer within 3 s" in html
