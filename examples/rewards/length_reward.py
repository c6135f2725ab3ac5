#!/usr/bin/env python3
"""An external reward for ponder: longer thoughts score higher, up to a cap.

ponder starts this script once and keeps it running. For each sample it writes
one JSON line to stdin:
    {"prompt": "...", "completion": "...", "row": {...} or null, "answer": "..." or null}
and reads one JSON line back from stdout:
    {"reward": number}   or   {"reward": null}   (null = not applicable)
Answers go in request order, one line each, flushed. Anything printed to stderr
is kept by ponder and shown if the script fails.

Usage (see external.yaml):  python3 length_reward.py [CAP_CHARS]
"""
import json
import sys

CAP = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def score(request):
    completion = request["completion"]
    if "<think>" not in completion:
        return None  # no thought to measure: not applicable
    thought = completion.split("<think>", 1)[1].split("</think>", 1)[0]
    return min(len(thought.strip()), CAP) / CAP


for line in sys.stdin:
    reward = score(json.loads(line))
    print(json.dumps({"reward": reward}), flush=True)
