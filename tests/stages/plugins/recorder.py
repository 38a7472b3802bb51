"""A user verifier given by file path: records every call, rewards short answers."""

import json


def verify(completion, answer, log=None, **row):
    with open(log, "a") as fh:
        fh.write(json.dumps({"completion": completion[:50], "answer": answer}) + "\n")
    return 1.0 if len(completion) < 10 else 0.0
