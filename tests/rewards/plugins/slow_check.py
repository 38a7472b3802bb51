"""Test plug-ins: a verifier that hangs ignoring signals, one that raises, one that returns a float."""

import signal
import time


def hang(completion, answer, **row):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.01)


def boom(completion, answer, **row):
    raise RuntimeError("verifier bug")


def length_score(completion, answer, **row):
    return min(1.0, len(completion) / 10)
