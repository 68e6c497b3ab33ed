"""The tables the ``agentmemory`` admin commands print instead of JSON: ``stats`` and ``llm
test`` without ``--json``.

Apart from cli.py (the commands, their arguments and how they run) because they only format a
result the command already has; each takes the JSON result as it is and prints it to stdout.
"""

from __future__ import annotations

from typing import Any


def print_stats(result: dict[str, Any]) -> None:
    db = result["db"]
    print(
        f"database   {db['path']}  schema v{db['schemaVersion']}  "
        f"{db['sizeBytes']:,} bytes + WAL {db['walBytes']:,} bytes"
    )
    print("records by scope:")
    for scope, n in result["scopes"].items():
        print(f"  {scope:<24} {n:>10,}")
    print(f"  (observations in {result['sessionsWithObservations']:,} session(s))")
    print("indexed for search:")
    for kind, n in sorted(result["indexed"].items()):
        print(f"  {kind:<24} {n:>10,}")
    print_tokens(result["llm"])


def print_tokens(report: dict[str, Any]) -> None:
    budget = report["budget"]
    limit = f"budget {budget['daily']:,}/day" if budget["daily"] is not None else "no daily budget"
    print(f"model tokens per UTC day ({limit}; resets {budget['resetsAt']}):")
    for day in report["byDay"]:
        print(f"  {day['day']:<12} {day['totalTokens']:>12,} tokens {day['calls']:>7,} calls")
    print(f"today ({report['day']}) by feature:")
    if not report["byFeature"]:
        print("  (no model calls)")
    for feature, row in report["byFeature"].items():
        skipped = row["skippedBudget"] + row["skippedLowValue"]
        print(
            f"  {feature:<14} {row['totalTokens']:>10,} tokens {row['calls']:>6,} calls "
            f"{row['failed']:>4,} failed {skipped:>6,} skipped"
        )


def print_llm_request(request: dict[str, Any]) -> None:
    model = request["model"] + (f" ({', '.join(request['features'])})" if request.get("features") else "")
    if request["ok"]:
        valid = "valid JSON" if request["validJson"] else f"not the asked JSON: {request['answer']!r}"
        print(
            f"request    ok: {model} answered in {request['latencyMs']} ms "
            f"({request['promptTokens']} prompt + {request['completionTokens']} completion tokens, {valid})"
        )
    else:
        print(f"request    FAILED: {model}: {request['error']}")


def print_llm_test(result: dict[str, Any]) -> None:
    if result["provider"] is None:
        print("provider   none: every LLM feature runs deterministically (set AGENTMEMORY_LLM_PROVIDER)")
    else:
        print(f"provider   {result['provider']}  {result['baseUrl'] or ''}")
    if result["problem"]:
        print(f"problem    {result['problem']}")
    for request in [result["request"], *result.get("otherModels", [])]:
        if request is not None:
            print_llm_request(request)
    print(f"{'feature':<14} {'enabled':<8} {'model call':<11} {'provider':<10} {'model':<28} budget left today")
    for feature, plan in result["features"].items():
        left = "no limit" if plan["budgetLeft"] is None else f"{plan['budgetLeft']:,}"
        if plan["budgetReached"]:
            left += " (reached)"
        print(
            f"{feature:<14} {'yes' if plan['enabled'] else 'no':<8} {'yes' if plan['usesModel'] else 'no':<11} "
            f"{plan['provider'] or '-':<10} {plan['model'] or '-':<28} {left}"
        )
