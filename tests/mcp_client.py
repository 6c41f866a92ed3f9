#!/usr/bin/env python3
"""Drive Backbeat's MCP server with the official MCP Python SDK (PyPI `mcp`).

A test helper: it checks that a real third-party MCP client can talk to
`beat mcp start` over stdio, delegate a task, follow it to completion, read
its logs and get proper errors back.

Usage:
    BACKBEAT_HOME=/some/dir python3 tests/mcp_client.py --beat /path/to/beat

The server inherits the whole environment. On success one JSON line is
printed to stdout, e.g. {"ok": true, "taskId": "task-...", ...}, and the exit
code is 0; on a failed check the reason goes to stderr and the exit code is 1.
Works with both the 1.x and 2.x `mcp` releases: results are read through
their wire form (camelCase keys), not through version-specific attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared import exceptions as _mcp_exceptions

# 1.x calls it McpError, 2.x MCPError.
McpError = getattr(_mcp_exceptions, "McpError", None) or getattr(_mcp_exceptions, "MCPError")

OVERALL_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
POLL_LIMIT_S = 30.0
EXPECTED_TOOLS = ("DelegateTask", "TaskStatus", "TaskLogs", "CancelTask", "RetryTask")
TERMINAL = ("completed", "failed", "cancelled")


class CheckFailed(Exception):
    """A check on Backbeat's answers did not hold."""


def check(cond: bool, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


def wire(model: Any) -> dict[str, Any]:
    """A result model as it travelled on the wire (camelCase keys)."""
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


def tool_json(name: str, result: Any) -> tuple[bool, Any]:
    """(isError, parsed JSON of the single text content) of a tools/call result."""
    data = wire(result)
    content = data.get("content") or []
    check(len(content) == 1, f"{name}: expected one content item, got {content!r}")
    check(content[0].get("type") == "text", f"{name}: content is not text: {content[0]!r}")
    text = content[0].get("text", "")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text  # error results may be plain text
    return bool(data.get("isError", False)), parsed


async def run(beat: str) -> dict[str, Any]:
    params = StdioServerParameters(command=beat, args=["mcp", "start"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            # 1-2. Handshake.
            init = wire(await session.initialize())
            server_name = (init.get("serverInfo") or {}).get("name")
            check(server_name == "backbeat", f"serverInfo.name is {server_name!r}, want 'backbeat'")

            # 3. Tools.
            tools = wire(await session.list_tools()).get("tools", [])
            names = [t.get("name") for t in tools]
            missing = [n for n in EXPECTED_TOOLS if n not in names]
            check(not missing, f"tools missing: {missing} (have {names})")
            for t in tools:
                schema = t.get("inputSchema") or {}
                check(schema.get("type") == "object", f"tool {t.get('name')}: inputSchema.type is not 'object': {schema!r}")

            # 4. Delegate.
            args = {"prompt": "echo from-python-client", "agent": "shell"}
            is_error, body = tool_json("DelegateTask", await session.call_tool("DelegateTask", args))
            check(not is_error, f"DelegateTask: isError is true: {body!r}")
            check(isinstance(body, dict) and body.get("success") is True, f"DelegateTask: success is not true: {body!r}")
            task_id = body.get("taskId")
            check(isinstance(task_id, str) and task_id.startswith("task-"), f"DelegateTask: bad taskId {task_id!r}")

            # 5. Poll until terminal.
            status = None
            deadline = time.monotonic() + POLL_LIMIT_S
            while True:
                is_error, body = tool_json("TaskStatus", await session.call_tool("TaskStatus", {"taskId": task_id}))
                check(not is_error, f"TaskStatus: isError is true: {body!r}")
                check(isinstance(body, dict), f"TaskStatus: not a JSON object: {body!r}")
                status = body.get("status")
                if status in TERMINAL:
                    break
                check(time.monotonic() < deadline, f"TaskStatus: still {status!r} after {POLL_LIMIT_S:.0f} s")
                await asyncio.sleep(POLL_INTERVAL_S)
            check(status == "completed", f"task ended {status!r}, want 'completed': {body!r}")

            # 6. Logs.
            is_error, body = tool_json("TaskLogs", await session.call_tool("TaskLogs", {"taskId": task_id}))
            check(not is_error, f"TaskLogs: isError is true: {body!r}")
            output = body.get("output") if isinstance(body, dict) else None
            check(isinstance(output, str) and "from-python-client" in output, f"TaskLogs: output lacks the echo: {body!r}")

            # 7. An invalid priority is refused, as a tool error or a protocol error.
            bad = {"prompt": "x", "priority": "P9", "agent": "shell"}
            try:
                is_error, body = tool_json("DelegateTask(P9)", await session.call_tool("DelegateTask", bad))
                check(is_error, f"DelegateTask with priority P9 was accepted: {body!r}")
                invalid_priority = "isError"
            except McpError as e:
                invalid_priority = f"McpError: {e}"

            # 8. An unknown task is a tool error.
            is_error, body = tool_json(
                "TaskStatus(unknown)", await session.call_tool("TaskStatus", {"taskId": "task-does-not-exist"})
            )
            check(is_error, f"TaskStatus of an unknown task: isError is false: {body!r}")

            return {
                "ok": True,
                "taskId": task_id,
                "tools": names,
                "serverName": server_name,
                "protocolVersion": init.get("protocolVersion"),
                "finalStatus": status,
                "invalidPriority": invalid_priority,
            }


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups raised by anyio task groups."""
    inner = getattr(exc, "exceptions", None)
    if not inner:
        return [exc]
    return [leaf for e in inner for leaf in leaves(e)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beat", required=True, help="path to the beat binary")
    opts = parser.parse_args()
    if "BACKBEAT_HOME" not in os.environ:
        print("mcp_client: BACKBEAT_HOME is not set", file=sys.stderr)
        return 1
    try:
        summary = asyncio.run(asyncio.wait_for(run(opts.beat), OVERALL_TIMEOUT_S))
    except (asyncio.TimeoutError, TimeoutError):
        print(f"mcp_client: timed out after {OVERALL_TIMEOUT_S:.0f} s", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
        for leaf in leaves(exc):
            kind = "check failed" if isinstance(leaf, CheckFailed) else type(leaf).__name__
            print(f"mcp_client: {kind}: {leaf}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
