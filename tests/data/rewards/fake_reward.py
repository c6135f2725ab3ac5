#!/usr/bin/env python3
"""A reward process for tests/test_rewards_external.c: one behaviour per mode
(argv[1]), each answering ponder's JSON-lines protocol well or badly."""
import json
import os
import signal
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "echo"


def reply(obj):
    sys.stdout.write(obj if isinstance(obj, str) else json.dumps(obj))
    sys.stdout.write("\n")
    sys.stdout.flush()


def echo(req):
    # Proves every field arrived: prompt length * 1000 + completion length,
    # +0.5 when the answer is "bonus", null when the row says so.
    row = req["row"]
    if row is not None and row.get("na"):
        return {"reward": None}
    value = 1000 * len(req["prompt"]) + len(req["completion"])
    if req["answer"] == "bonus":
        value += 0.5
    return {"reward": value}


for line in sys.stdin:
    req = json.loads(line)
    if mode == "echo":
        reply(echo(req))
    elif mode == "multi":
        c = req["completion"]
        reply({"rewards": {"chars": len(c), "lines": c.count("\n") + 1, "ignored": "extra keys are fine"}})
    elif mode == "replacement":
        reply({"reward": 1.0 if "\ufffd" in req["completion"] else 0.0})
    elif mode == "sleep":
        time.sleep(30)
    elif mode == "crash":
        sys.stderr.write("Traceback: boom, cannot score this\n")
        sys.stderr.flush()
        sys.exit(3)
    elif mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "malformed":
        reply("this is not json")
    elif mode == "wrong_type":
        reply({"reward": "high"})
    elif mode == "missing_key":
        reply({"score": 1})
    elif mode == "extra_line":
        reply({"reward": 1})
        reply({"reward": 2})
    elif mode == "ignore_eof":
        reply({"reward": 1})

if mode == "ignore_eof":
    time.sleep(30)
