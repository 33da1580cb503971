"""Must NOT type-check: mypy knows the fields' types (cargo xtask test
checks that mypy rejects this file)."""

import pmet


def oops(r: pmet.Report) -> str:
    return r.totals.processes  # an int, not a str
