"""Latency of one MCP tool call through each MCP surface, against the real server.

    python bench/mcp_latency.py [--observations 2000] [--calls 300]

Starts ``python src/app.py`` on a free 127.0.0.1 port with a fresh database, records
``--observations`` observations, then times ``memory_recall`` (BM25, limit 10) sequentially
through: upstream's plain ``POST /agentmemory/mcp/call``; JSON-RPC ``POST /mcp`` in the
handshake era (2025-11-25) and the 2026-07-28 envelope; and the stdio proxy
(``src/mcp_stdio.py``, driven by the official SDK's stdio client), whose figure includes the
extra HTTP hop. Prints p50/p95/p99 per surface and the proxy overhead, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ROOT, start_server  # noqa: E402

QUERY = {"query": "pytest fixture failure in the auth module", "limit": 10}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {}}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": round(pick(0.50), 2), "p95_ms": round(pick(0.95), 2), "p99_ms": round(pick(0.99), 2),
            "mean_ms": round(statistics.fmean(samples) * 1000, 2)}


def seed(url: str, count: int) -> None:
    with requests.Session() as http:
        for i in range(count):
            http.post(f"{url}/agentmemory/observe", json={
                "hookType": "post_tool_use", "sessionId": f"bench-{i // 100}", "project": "bench", "cwd": "/w",
                "timestamp": f"2026-11-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                "data": {"tool_name": "Bash", "tool_input": {"command": f"pytest tests/test_{i}.py"},
                         "tool_output": f"test_{i} {'failed: auth fixture' if i % 7 == 0 else 'passed'}"}})


def time_http(url: str, calls: int, body: dict, headers: dict[str, str]) -> list[float]:
    samples = []
    with requests.Session() as http:
        for _ in range(calls + 10):
            start = time.perf_counter()
            r = http.post(url, json=body, headers=headers)
            samples.append(time.perf_counter() - start)
            result = r.json().get("result", r.json())  # JSON-RPC wraps the tool result
            assert r.status_code == 200 and "content" in result and not result.get("isError"), r.text
    return samples[10:]


async def time_stdio(url: str, calls: int) -> list[float]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=[str(ROOT / "src" / "mcp_stdio.py")],
                                   env={"AGENTMEMORY_URL": url})
    samples = []
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(calls + 10):
                start = time.perf_counter()
                result = await session.call_tool("memory_recall", QUERY)
                samples.append(time.perf_counter() - start)
                assert not result.is_error
    return samples[10:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=300)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, url = start_server(data_dir, threads=8)
        try:
            seed(url, opts.observations)
            results = {
                "http_mcp_call": time_http(f"{url}/agentmemory/mcp/call", opts.calls,
                                           {"name": "memory_recall", "arguments": QUERY}, {}),
                "jsonrpc_2025_11_25": time_http(f"{url}/mcp", opts.calls, {
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "memory_recall", "arguments": QUERY}}, {"MCP-Protocol-Version": "2025-11-25"}),
                "jsonrpc_2026_07_28": time_http(f"{url}/mcp", opts.calls, {
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "memory_recall", "arguments": QUERY, "_meta": MODERN_META}},
                    {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "memory_recall"}),
                "stdio_proxy": anyio.run(time_stdio, url, opts.calls),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    summary = {name: percentiles(samples) for name, samples in results.items()}
    print(f"memory_recall, {opts.observations} observations, {opts.calls} sequential calls per surface "
          "(2 shared cores: expect noise)")
    for name, stats in summary.items():
        print(f"  {name:22s} p50 {stats['p50_ms']:7.2f} ms  p95 {stats['p95_ms']:7.2f} ms  "
              f"p99 {stats['p99_ms']:7.2f} ms")
    overhead = summary["stdio_proxy"]["p50_ms"] - summary["http_mcp_call"]["p50_ms"]
    print(f"  stdio proxy overhead over the HTTP call it makes: {overhead:.2f} ms at p50")
    print(json.dumps({"bench": "mcp_latency", "observations": opts.observations, "calls": opts.calls,
                      "surfaces": summary, "stdio_overhead_p50_ms": round(overhead, 2)}))


if __name__ == "__main__":
    main()
