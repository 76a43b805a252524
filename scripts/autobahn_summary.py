#!/usr/bin/env python3
"""Summarise an Autobahn fuzzingclient report: counts per verdict, every failing case, exit 1 on
any failure. A case passes when its behavior is OK, NON-STRICT or INFORMATIONAL and its close
behavior is OK or INFORMATIONAL."""
import json
import sys
from collections import Counter

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_PASS = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def main(path):
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"autobahn: no usable report at {path}: {e}")
        return 1
    failed = []
    verdicts = Counter()
    total = 0
    for agent, cases in report.items():
        for case_id in sorted(cases, key=case_key):
            r = cases[case_id]
            total += 1
            verdicts[r["behavior"]] += 1
            if r["behavior"] not in PASS or r["behaviorClose"] not in CLOSE_PASS:
                failed.append((agent, case_id, r["behavior"], r["behaviorClose"], r.get("remoteCloseCode")))
    print("autobahn: %d cases: %s" % (total, ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))))
    for agent, case_id, b, bc, code in failed:
        print(f"autobahn: FAILED {agent} case {case_id}: behavior {b}, close {bc}, remote close code {code}")
    if total == 0:
        print("autobahn: the report has no cases")
        return 1
    print(f"{total - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/autobahn/report/index.json"))
