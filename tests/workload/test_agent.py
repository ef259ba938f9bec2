"""The shipped agent's calls: the teacher's answers follow from what the user said."""

from __future__ import annotations

import json
import re

from protege.workload import CABINS, generate


def test_a_flight_call_carries_exactly_the_details_the_user_gave() -> None:
    for drifted in (False, True):
        calls = generate(200, seed=11, families=("tool",), drifted=drifted)
        for call in calls:
            text = call.request["messages"][-1]["content"].lower()
            arguments = json.loads(call.answer["tool_calls"][0]["function"]["arguments"])
            for city in (arguments["origin"], arguments["destination"]):
                assert city.lower() in text
            # a made-up count would be noise no model can learn
            said = re.search(r"\b(\d) (?:people|seats|travelling)\b", text)
            assert arguments.get("passengers") == (int(said.group(1)) if said else None)
            assert ("cabin" in arguments) is drifted
            if drifted:
                assert arguments["cabin"] in CABINS and arguments["cabin"] in text
        assert any(
            "passengers" in json.loads(c.answer["tool_calls"][0]["function"]["arguments"]) for c in calls
        )
