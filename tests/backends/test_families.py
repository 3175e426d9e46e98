"""Model families (issue 24): each fine-tune's published reply format parses to the same actions,
its grammar accepts its golden replies and nothing the policy refuses, and a checkpoint saved as
that family is recognised and answers under its grammar with random weights."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from actions import Policy, check_reply, to_json
from actions.policy import Allow
from agent.backends.families import FAMILIES, NATIVE, detect, family

POLICY = Policy()
# (reply exactly as the family's authors publish it, the native action it means)
GOLDEN = {
    "qwen3-vl": [
        ('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [512, 733]}}\n</tool_call>',
         {"action": "left_click", "coordinate": [512, 733]}),
    ],
    "gui-owl-1.5": [
        ('Action: Click the Submit button.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [512, 733]}}\n</tool_call>',
         {"action": "left_click", "coordinate": [512, 733]}),
        ('Action: Type the name.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "type", "text": "Ada Lovelace"}}\n</tool_call>',
         {"action": "type", "text": "Ada Lovelace"}),
        ('Action: Save.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "key", "keys": ["ctrl", "s"]}}\n</tool_call>',
         {"action": "key", "keys": ["ctrl", "s"]}),
        ('Action: Done.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "terminate", "status": "success"}}\n</tool_call>',
         {"action": "terminate", "status": "success"}),
    ],
    "mai-ui": [  # coordinates on 0..999 (MAI-UI's SCALE_FACTOR)
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [999, 0]}}\n</tool_call>',
         {"action": "left_click", "coordinate": [1000, 0]}),
        ('<thinking>\nThe Name field is empty.\n</thinking>\n<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [333, 666]}}\n</tool_call>',
         {"action": "left_click", "coordinate": [333.333, 666.667]}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "type", "text": "ada@example.com"}}\n</tool_call>',
         {"action": "type", "text": "ada@example.com"}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "swipe", "direction": "up", "coordinate": [499, 499]}}\n</tool_call>',
         {"action": "scroll", "pixels": -500, "coordinate": [499.499, 499.499]}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "drag", "start_coordinate": [0, 0], "end_coordinate": [999, 999]}}\n</tool_call>',
         {"action": "left_click_drag", "start_coordinate": [0, 0], "coordinate": [1000, 1000]}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "system_button", "button": "enter"}}\n</tool_call>',
         {"action": "key", "keys": ["enter"]}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "terminate", "status": "fail"}}\n</tool_call>',
         {"action": "terminate", "status": "failure"}),
        ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "answer", "text": "42"}}\n</tool_call>',
         {"action": "answer", "text": "42"}),
        ('<grounding_think>The OK button.</grounding_think>\n<answer>\n{"coordinate": [999,499]}\n</answer>',
         {"action": "left_click", "coordinate": [1000, 499.499]}),
    ],
    "ui-venus-1.5": [
        ("<think>The name field is at the top.</think>\n<action>Click(box=(120,340))</action>\n<conclusion>Click the name field.</conclusion>",
         {"action": "left_click", "coordinate": [120, 340]}),
        ("<think></think>\n<action>Type(content='Ada\\'s Lovelace')</action>\n<conclusion></conclusion>",
         {"action": "type", "text": "Ada's Lovelace"}),
        ("<think>copy</think>\n<action>Hotkey(keys=['ctrl', 'c'])</action>\n<conclusion>copy</conclusion>",
         {"action": "key", "keys": ["ctrl", "c"]}),
        ("<think>more</think>\n<action>Scroll(direction='down')</action>\n<conclusion>down</conclusion>",
         {"action": "scroll", "pixels": -500}),
        ("<think>x</think>\n<action>Drag(start=(10,20), end=(30,40))</action>\n<conclusion>x</conclusion>",
         {"action": "left_click_drag", "start_coordinate": [10, 20], "coordinate": [30, 40]}),
        ("<think>x</think>\n<action>PressEnter()</action>\n<conclusion>x</conclusion>", {"action": "key", "keys": ["enter"]}),
        ("<think>done</think>\n<action>Finished(content='')</action>\n<conclusion>done</conclusion>",
         {"action": "terminate", "status": "success"}),
        ("[500,250]", {"action": "left_click", "coordinate": [500, 250]}),  # its grounding prompt's answer
        ("[100,100,300,200]", {"action": "left_click", "coordinate": [200, 150]}),
    ],
}
ASKING = Policy(can_ask=True)
# Each family's own way of asking the person (MAI-UI's ask_user and INFO, UI-Venus 1.5's CallUser,
# GUI-Owl 1.5's interact) and of answering the task, with a person to ask.
QUESTIONS = {
    "qwen3-vl": [('<tool_call>\n{"name": "computer_use", "arguments": {"action": "ask_user", "text": "Which account?"}}\n</tool_call>',
                  {"action": "ask_user", "text": "Which account?"})],
    "gui-owl-1.5": [('Action: Ask which account.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "interact", "text": "Which account?"}}\n</tool_call>',
                     {"action": "ask_user", "text": "Which account?"})],
    "mai-ui": [('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "ask_user", "text": "Which account?"}}\n</tool_call>',
                {"action": "ask_user", "text": "Which account?"}),
               ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "INFO", "text": "Which account?"}}\n</tool_call>',
                {"action": "ask_user", "text": "Which account?"})],
    "ui-venus-1.5": [("<think>two accounts</think>\n<action>CallUser(content='Which account?')</action>\n<conclusion>ask</conclusion>",
                      {"action": "ask_user", "text": "Which account?"}),
                     ("<think>read it</think>\n<action>Finished(content='42 items')</action>\n<conclusion>done</conclusion>",
                      {"action": "answer", "text": "42 items"})],
}
REFUSED = {
    "mai-ui": ['<tool_call>\n{"name": "mobile_use", "arguments": {"action": "system_button", "button": "home"}}\n</tool_call>',
               '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "long_press", "coordinate": [1, 2]}}\n</tool_call>',
               '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "open", "text": "Chrome"}}\n</tool_call>'],
    "ui-venus-1.5": ["<think></think>\n<action>PressHome()</action>\n<conclusion></conclusion>",
                     "<think></think>\n<action>LongPress(box=(1,2))</action>\n<conclusion></conclusion>", "[-1,-1]"],
}


@pytest.mark.parametrize("name,reply,expected", [(n, r, e) for n, cases in GOLDEN.items() for r, e in cases])
def test_golden_replies_in_each_published_format_parse_to_the_right_action(name, reply, expected):
    action = check_reply(family(name).to_native(reply), POLICY)
    assert to_json(action) == expected


@pytest.mark.parametrize("name,reply", [(n, r) for n, rs in REFUSED.items() for r in rs])
def test_actions_without_a_desktop_equivalent_are_refused_with_the_reason(name, reply):
    from actions import ParseError

    with pytest.raises(ParseError):
        check_reply(family(name).to_native(reply), POLICY)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_earlier_replies_go_back_to_the_model_in_its_own_format(name):
    fam = family(name)
    for _, expected in GOLDEN[name]:
        written = fam.from_native(expected)
        back = to_json(check_reply(fam.to_native(written), POLICY))
        assert {k: v for k, v in back.items() if "coordinate" not in k} == \
            {k: v for k, v in expected.items() if "coordinate" not in k}
        for key in ("coordinate", "start_coordinate"):  # 0..999 and back: within one step of 1000
            assert (key in back) == (key in expected)
            if key in back:
                assert all(abs(a - b) <= 1 for a, b in zip(back[key], expected[key]))


def test_recognised_from_hub_ids_folder_names_and_configs(tmp_path):
    assert detect("Qwen/Qwen3-VL-2B-Instruct") is NATIVE
    assert detect("Tongyi-MAI/MAI-UI-2B").name == "mai-ui"
    assert detect("inclusionAI/UI-Venus-1.5-2B").name == "ui-venus-1.5"
    assert detect("mPLUG/GUI-Owl-1.5-2B-Instruct").name == "gui-owl-1.5"
    assert detect("/hf/models--Tongyi-MAI--MAI-UI-2B/snapshots/abc").name == "mai-ui"
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "inclusionAI/UI-Venus-1.5-2B"}))
    assert detect(str(folder), folder).name == "ui-venus-1.5"
    (folder / "config.json").write_text(json.dumps({"vlagent_format": "gui-owl-1.5"}))
    assert detect(str(folder), folder).name == "gui-owl-1.5"


def test_the_prompt_follows_each_family(tmp_path):
    image = Image.new("RGB", (64, 64))
    native = [{"role": "system", "content": [{"type": "text", "text": "tools"}]},
              {"role": "user", "content": [{"type": "text", "text": "Task: fill the form"}]},
              {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Step 1"}]},
              {"role": "assistant", "content": [{"type": "text", "text": GOLDEN["qwen3-vl"][0][0]}]},
              {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Step 2"}]}]
    assert family("qwen3-vl").adapt(native, POLICY) is native
    mai = family("mai-ui").adapt(native, POLICY)
    assert "mobile_use" in mai[0]["content"][0]["text"] and mai[2]["content"][0]["type"] == "text"  # text first
    assert '"coordinate": [511, 732]' in mai[3]["content"][0]["text"]  # 0..999
    venus = family("ui-venus-1.5").adapt(native, POLICY)
    assert venus[0]["role"] == "user" and "Click(box=(x1,y1))" in venus[0]["content"][0]["text"]
    assert "Task: fill the form" in venus[0]["content"][1]["text"]
    assert venus[2]["content"][0]["text"].endswith("<action>Click(box=(512,733))</action>\n<conclusion></conclusion>")
    owl = family("gui-owl-1.5").adapt(native, POLICY)
    assert '"name": "computer_use"' in owl[0]["content"][0]["text"] and "Action:" in owl[0]["content"][0]["text"]
    assert native[2]["content"][0]["type"] == "image"  # the caller's messages are not edited


@pytest.fixture(scope="module")
def constrainer():
    from transformers import AutoTokenizer

    from agent.backends.grammar import make_constrainer
    from agent.backends.tiny import tiny_checkpoint

    folder = tiny_checkpoint()
    vocab = json.loads((folder / "config.json").read_text())["text_config"]["vocab_size"]
    return make_constrainer(AutoTokenizer.from_pretrained(folder), vocab)


GRAMMAR_GOLDEN = {  # golden replies in the exact shape the grammar writes (no free whitespace, no <thinking>)
    "gui-owl-1.5": [r for r, _ in GOLDEN["gui-owl-1.5"]],
    "mai-ui": [r for r, _ in GOLDEN["mai-ui"] if r.startswith("<tool_call>")],
    "ui-venus-1.5": [r for r, _ in GOLDEN["ui-venus-1.5"] if r.startswith("<think>")],
}


@pytest.mark.parametrize("name", list(GRAMMAR_GOLDEN))
def test_each_familys_grammar_accepts_its_golden_replies(constrainer, name):
    fam = family(name)
    for reply in GRAMMAR_GOLDEN[name]:
        m = fam.matcher(constrainer, POLICY)
        assert m.accept_string(reply), reply
        assert len(reply.encode()) < fam.max_reply_tokens(POLICY)


@pytest.mark.parametrize("name", ["mai-ui", "ui-venus-1.5"])
def test_a_familys_grammar_only_offers_what_the_policy_allows(constrainer, name):
    only_clicks = Policy(allow=Allow(actions=["left_click", "terminate"]))
    fam = family(name)
    typed = next(r for r in GRAMMAR_GOLDEN[name] if "Type(" in r or '"type"' in r)
    assert not fam.matcher(constrainer, only_clicks).accept_string(typed)
    click = next(r for r in GRAMMAR_GOLDEN[name] if "Click(" in r or '"click"' in r)
    assert fam.matcher(constrainer, only_clicks).accept_string(click)


@pytest.mark.slow  # loads the tiny model
@pytest.mark.parametrize("name", ["gui-owl-1.5", "mai-ui", "ui-venus-1.5"])
def test_a_random_weight_checkpoint_saved_as_the_family_answers_in_its_format(name):
    """The tiny checkpoint saved with the family's name is recognised and, decoded under the
    family's grammar, its noise is always an action the policy accepts."""
    from agent.backends import load_backend

    backend = load_backend(f"tiny-random:{name}")
    assert backend.format == name
    image = Image.new("RGB", (320, 200), "white")
    policy = Policy(allow=Allow(actions=["left_click", "type", "key", "scroll", "wait", "terminate"], max_text_len=20))
    messages = [{"role": "system", "content": [{"type": "text", "text": "tools"}]},
                {"role": "user", "content": [{"type": "text", "text": "Task: click OK"}]},
                {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Step 1"}]}]
    for _ in range(2):
        reply = backend.generate(messages, policy)
        assert backend.last_reply != reply or name == "gui-owl-1.5"
        action = check_reply(reply, policy)  # parses and passes the policy
        messages += [{"role": "assistant", "content": [{"type": "text", "text": reply}]},
                     {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Step"}]}]
        assert action.action in policy.actions


def test_a_served_family_model_gets_its_prompt_and_its_reply_is_translated():
    """--backend openai with a MAI-UI model: MAI's prompt goes out (no JSON schema: its format is
    its own), the 0..999 reply comes back as a native tool call."""
    import threading

    from test_openai_backend import MODEL, FakeServer

    from agent.backends.openai import OpenAIBackend

    srv = FakeServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    mai = GOLDEN["mai-ui"][0][0]
    completion = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": mai}}]}
    try:
        backend = OpenAIBackend(MODEL, srv.base_url, backoff_s=0.01, format="mai-ui", check_image_tokens=False)
        srv.plan = [(200, completion, {}, 0.0)]
        reply = backend.generate([{"role": "system", "content": [{"type": "text", "text": "tools"}]},
                                  {"role": "user", "content": [{"type": "text", "text": "Task: click"}]}], POLICY)
        assert to_json(check_reply(reply, POLICY)) == {"action": "left_click", "coordinate": [1000, 0]}
        assert backend.last_reply == mai
        sent = srv.requests[-1]
        assert "response_format" not in sent and "mobile_use" in sent["messages"][0]["content"]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("name", ["gui-owl-1.5", "mai-ui", "ui-venus-1.5"])
def test_random_token_walks_end_in_an_action_within_the_reply_budget(constrainer, name):
    """Whatever the weights pick among the tokens the family's grammar allows (long tokens first: the
    worst case for length), the reply ends within max_reply_tokens and means an allowed action.
    Free text is `x*` in the grammar and bounded while decoding (a `x{0,n}` compiled for 20 s)."""
    import random

    import torch
    import xgrammar as xgr

    fam = family(name)
    policy = Policy(allow=Allow(max_text_len=40))
    budget = fam.max_reply_tokens(policy)
    rng = random.Random(3)
    mask = xgr.allocate_token_bitmask(1, constrainer.vocab_size)
    tb = constrainer.token_bytes
    for _ in range(6):
        m = fam.matcher(constrainer, policy)
        out, steps = b"", 0
        while True:
            m.fill_next_token_bitmask(mask)
            bits = ((mask[0].view(-1, 1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()[:constrainer.vocab_size]
            allowed = [t for t in torch.nonzero(bits).flatten().tolist() if tb[t]]
            if not allowed:
                break
            tid = max(rng.sample(allowed, min(6, len(allowed))), key=lambda t: len(tb[t]))
            assert m.accept_token(tid)
            if m.is_terminated():
                break
            out, steps = out + tb[tid], steps + 1
            assert steps < budget
        action = check_reply(fam.to_native(out.decode()), policy)
        assert action.action in policy.actions


@pytest.mark.parametrize("name,reply,expected", [(n, r, e) for n, cases in QUESTIONS.items() for r, e in cases])
def test_each_familys_question_is_ask_user_and_goes_back_in_its_own_words(name, reply, expected):
    fam = family(name)
    assert to_json(check_reply(fam.to_native(reply), ASKING)) == expected
    assert to_json(check_reply(fam.to_native(fam.from_native(expected)), ASKING)) == expected


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_is_offered_the_question_only_where_a_person_can_answer(name):
    fam = family(name)
    word = {"qwen3-vl": '"ask_user', "gui-owl-1.5": '"interact', "mai-ui": '"ask_user', "ui-venus-1.5": "CallUser("}[name]
    from agent.run.history import system_prompt

    prompt = (lambda p: system_prompt(p)) if fam is NATIVE else fam.system_prompt  # (the native one is the loop's)
    assert word in prompt(ASKING) and word in fam.grammar(ASKING)
    assert word not in prompt(POLICY) and word not in fam.grammar(POLICY)
