"""Progress lines for long work: one line per step on stderr, so stdout stays for results."""
import sys


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
