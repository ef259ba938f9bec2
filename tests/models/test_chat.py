"""Tools written into the prompt for templates without tools: the same for training and serving."""

from __future__ import annotations

import json
from pathlib import Path

from protege.models.chat import chat_template_of, hermes_messages, template_knows_tools, tools_in_prompt
from protege.workload import generate


def test_a_tool_request_is_served_the_prompt_its_specialist_was_trained_on() -> None:
    [call] = generate(1, seed=3, families=("tool",))
    served = tools_in_prompt(call.request)
    assert served["messages"] == hermes_messages(call.request["messages"], call.request["tools"])
    assert "<tools>" in served["messages"][0]["content"]
    assert "search_flights" in served["messages"][0]["content"]
    # the parser turns the answer's <tool_call> text back into tool_calls only with these
    assert served["tools"] == call.request["tools"] and served["tool_choice"] == "auto"
    assert call.request["messages"][0]["content"].endswith("never answer in prose.")  # not mutated


def test_earlier_tool_turns_are_written_out_and_other_requests_pass_untouched() -> None:
    turns = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
    ]  # fmt: skip
    served = tools_in_prompt({"model": "m", "messages": turns})
    assert [m["role"] for m in served["messages"]] == ["user", "assistant", "user"]
    assert json.loads(served["messages"][1]["content"].split("\n")[1]) == {
        "name": "weather",
        "arguments": {"city": "Oslo"},
    }
    assert served["messages"][2]["content"] == "<tool_response>\n-3 C\n</tool_response>"

    plain = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert tools_in_prompt(plain) is plain
    malformed = {"model": "m", "messages": "hi"}
    assert tools_in_prompt(malformed) is malformed


def test_the_model_directory_tells_whether_its_template_knows_tools(tmp_path: Path) -> None:
    assert chat_template_of(tmp_path) is None and not template_knows_tools(None)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"chat_template": [{"name": "default", "template": "{% for m in messages %}{% endfor %}"}]}
        )
    )
    assert not template_knows_tools(chat_template_of(tmp_path))
    (tmp_path / "chat_template.jinja").write_text("{% if tools %}{{ tools }}{% endif %}{{ m.tool_calls }}")
    assert template_knows_tools(chat_template_of(tmp_path))  # the saved .jinja wins
