#!/usr/bin/env python3
"""A scripted mock model provider for running the real agent CLIs offline.

Serves, on 127.0.0.1 only:
  * Anthropic Messages   HEAD /, POST /v1/messages[?beta=true] (SSE or JSON), POST /v1/messages/count_tokens
  * OpenAI Responses     POST /v1/responses (SSE or JSON)
  * Gemini               POST /v1beta/models/{model}:streamGenerateContent?alt=sse, POST ...:generateContent
Anything else gets a 404 JSON body (and is logged as api "other").

Usage:
  python3 mock_provider.py --script SCRIPT.json --log REQUESTS.jsonl [--port 0] [--dump-dir DIR]

Prints one line {"port": N} on stdout once listening. Exits when its stdin reaches EOF (so a
test that dies does not leak it; pass --no-stdin-watch for manual use) or on SIGTERM/SIGINT.

SCRIPT (JSON, re-read on every request; the error counter resets whenever its content changes):
  {
    "delayMs": 0,            # sleep before answering each generation request
    "errors": [{"status": 429, "retryAfterSeconds": 1, "message": "..."}],
                             # consumed in order, one per generation request, before normal replies
    "writeFile": {"path": "hello.txt", "content": "hi"},
                             # tool-call turn: make the CLI write this file (relative to its cwd)
    "codexTool": "exec_command",   # or "apply_patch" (Codex only)
    "text": "Created hello.txt containing hi.",  # the final answer
    "requireBearer": "TOKEN"  # answer 401 to a generation request without `Authorization: Bearer TOKEN`
  }
The turn is decided statelessly: if the last message of the conversation is a tool result, or
writeFile is not set, or the request offers no tools, the answer is `text`; otherwise it is the
tool call.

LOG: one JSON line per request (written when the answer is decided, i.e. before delayMs):
  seq, ts, api, method, path, query, model, stream, system, userPrompt, userTexts,
  messageCount, lastIsToolResult, tools (names offered), cwd (as found in the request),
  reply ("tool"|"text"|"json"|"error"|...), status, delayMs, headers{...}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_TEXT = "Done."


# --------------------------------------------------------------------------- script + log state


class State:
    def __init__(self, script_path: str | None, log_path: str | None, dump_dir: str | None):
        self.script_path = script_path
        self.log_path = log_path
        self.dump_dir = dump_dir
        self.lock = threading.Lock()
        self.seq = 0
        self.script_raw: bytes | None = None
        self.error_index = 0
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)

    def next_seq(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def load_script(self) -> dict:
        """Reads the script; resets the error counter when its content changed."""
        raw = b""
        if self.script_path:
            try:
                with open(self.script_path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raw = b""
        with self.lock:
            if raw != self.script_raw:
                self.script_raw = raw
                self.error_index = 0
        if not raw.strip():
            return {}
        try:
            script = json.loads(raw)
        except json.JSONDecodeError as e:
            print(f"mock_provider: bad script {self.script_path}: {e}", file=sys.stderr)
            return {}
        return script if isinstance(script, dict) else {}

    def take_error(self, script: dict) -> dict | None:
        errors = script.get("errors") or []
        with self.lock:
            if self.error_index < len(errors):
                err = errors[self.error_index]
                self.error_index += 1
                return err if isinstance(err, dict) else {"status": int(err)}
        return None

    def log(self, entry: dict) -> None:
        if not self.log_file:
            return
        line = json.dumps(entry, ensure_ascii=False)
        with self.lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def dump(self, seq: int, body) -> None:
        if self.dump_dir:
            with open(os.path.join(self.dump_dir, f"{seq:04d}.json"), "w", encoding="utf-8") as f:
                json.dump(body, f, ensure_ascii=False, indent=1)


# --------------------------------------------------------------------------- helpers


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def estimate_tokens(raw_len: int) -> int:
    return max(12, raw_len // 4)


def output_tokens_for(text: str) -> int:
    return max(5, len(text) // 4 + 3)


def sse(event: str | None, data: dict) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, ensure_ascii=False) + "\n\n").encode("utf-8")


SYSTEM_REMINDER_RE = re.compile(r"<system-reminder>.*?</system-reminder>\n?", re.S)


def strip_system_reminders(text: str) -> str:
    return SYSTEM_REMINDER_RE.sub("", text)


def find_claude_cwd(system_text: str, user_texts: list[str]) -> str | None:
    for text in [system_text, *user_texts]:
        m = re.search(r"(?:Primary working directory|Working directory|cwd):\s*(/[^\n<]*)", text)
        if m:
            return m.group(1).strip()
    return None


def find_codex_cwd(texts: list[str]) -> str | None:
    for text in texts:
        m = re.search(r"<cwd>(.*?)</cwd>", text, re.S)
        if m:
            return m.group(1).strip()
    return None


def find_gemini_cwd(texts: list[str]) -> str | None:
    for text in texts:
        m = re.search(r"Workspace Directories:\W*\n\s*-\s*(/[^\n]*)", text)
        if m:
            return m.group(1).strip()
        m = re.search(r"(?:current working directory|working directory)[^/\n]*?(/[^\s\n]+)", text, re.I)
        if m:
            return m.group(1).strip().rstrip(".:`'\"")
    return None


def abs_path(cwd: str | None, path: str) -> str:
    if os.path.isabs(path) or not cwd:
        return path
    return os.path.join(cwd, path)


def error_fields(err: dict) -> tuple[int, str, float]:
    status = int(err.get("status", 500))
    message = str(err.get("message") or f"mock error {status}")
    retry_after = float(err.get("retryAfterSeconds", 1 if status == 429 else 0) or 0)
    return status, message, retry_after


def fmt_seconds(s: float) -> str:
    return str(int(s)) if float(s).is_integer() else f"{s:g}"


# --------------------------------------------------------------------------- request parsing


class Parsed:
    """What the log needs, plus the facts the reply depends on."""

    def __init__(self):
        self.model = None
        self.stream = False
        self.system = ""
        self.user_prompt = None
        self.user_texts: list[str] = []
        self.message_count = 0
        self.last_is_tool_result = False
        self.tools: list[str] = []
        self.cwd = None


def parse_anthropic(body: dict) -> Parsed:
    p = Parsed()
    p.model = body.get("model")
    p.stream = bool(body.get("stream"))
    system = body.get("system")
    if isinstance(system, str):
        p.system = system
    elif isinstance(system, list):
        p.system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    messages = body.get("messages") or []
    p.message_count = len(messages)
    raw_user_texts = []
    for m in messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
        texts = []
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "text":
                raw_user_texts.append(b.get("text", ""))
                cleaned = strip_system_reminders(b.get("text", ""))
                if cleaned.strip():
                    texts.append(cleaned)
        if texts:
            p.user_texts.append("\n".join(texts))
    if p.user_texts:
        p.user_prompt = p.user_texts[0]
    if messages:
        last = messages[-1]
        content = last.get("content")
        p.last_is_tool_result = last.get("role") == "user" and isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
    p.tools = [t.get("name") for t in (body.get("tools") or []) if isinstance(t, dict)]
    p.cwd = find_claude_cwd(p.system, raw_user_texts)
    return p


CODEX_CONTEXT_PREFIXES = (
    "<environment_context>",
    "<user_instructions>",
    "# AGENTS.md instructions",
    "<INSTRUCTIONS>",
    "<turn_aborted>",
    "<user_shell_command>",
    "<skills_instructions>",
)


def content_texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    out = []
    for c in content or []:
        if isinstance(c, dict) and isinstance(c.get("text"), str):
            out.append(c["text"])
    return out


def parse_openai(body: dict) -> Parsed:
    p = Parsed()
    p.model = body.get("model")
    p.stream = bool(body.get("stream"))
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    items = items or []
    p.message_count = len(items)
    system_parts = []
    if body.get("instructions"):
        system_parts.append(body["instructions"])
    all_user = []
    for it in items:
        if not isinstance(it, dict):
            continue
        role = it.get("role")
        if it.get("type", "message") == "message" and role in ("developer", "system"):
            system_parts.extend(content_texts(it.get("content")))
        elif it.get("type", "message") == "message" and role == "user":
            texts = content_texts(it.get("content"))
            all_user.extend(texts)
            kept = [t for t in texts if not t.lstrip().startswith(CODEX_CONTEXT_PREFIXES)]
            if kept:
                p.user_texts.append("\n".join(kept))
    p.system = "\n".join(system_parts)
    if p.user_texts:
        p.user_prompt = p.user_texts[0]
    if items and isinstance(items[-1], dict):
        p.last_is_tool_result = items[-1].get("type") in (
            "function_call_output",
            "custom_tool_call_output",
            "local_shell_call_output",
            "mcp_call_output",
        )
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            p.tools.append(t.get("name") or t.get("type"))
    p.cwd = find_codex_cwd(all_user)
    return p


GEMINI_CONTEXT_RE = re.compile(r"^\s*<session_context>.*?</session_context>\s*", re.S)


def parse_gemini(body: dict, model: str | None, stream: bool) -> Parsed:
    p = Parsed()
    p.model = model
    p.stream = stream
    si = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(si, str):
        p.system = si
    elif isinstance(si, dict):
        p.system = "\n".join(x.get("text", "") for x in si.get("parts") or [] if isinstance(x, dict))
    contents = body.get("contents") or []
    if isinstance(contents, dict):
        contents = [contents]
    p.message_count = len(contents)
    all_user = []
    for c in contents:
        if not isinstance(c, dict) or c.get("role", "user") != "user":
            continue
        texts = [x["text"] for x in c.get("parts") or [] if isinstance(x, dict) and isinstance(x.get("text"), str)]
        all_user.extend(texts)
        kept = []
        for t in texts:
            if t.lstrip().startswith("<session_context>"):
                t = GEMINI_CONTEXT_RE.sub("", t, count=1)
                if not t.strip():
                    continue
            kept.append(t)
        if kept:
            p.user_texts.append("".join(kept) if len(kept) > 1 else kept[0])
    if p.user_texts:
        p.user_prompt = p.user_texts[0]
    if contents and isinstance(contents[-1], dict):
        parts = contents[-1].get("parts") or []
        p.last_is_tool_result = any(isinstance(x, dict) and "functionResponse" in x for x in parts)
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            for fd in t.get("functionDeclarations") or t.get("function_declarations") or []:
                p.tools.append(fd.get("name"))
    p.cwd = find_gemini_cwd(all_user)
    return p


# --------------------------------------------------------------------------- replies


def decide(script: dict, p: Parsed) -> str:
    if p.last_is_tool_result or not script.get("writeFile") or not p.tools:
        return "text"
    return "tool"


class Reply:
    def __init__(self, status=200, headers=None, body=b"", content_type="application/json"):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.content_type = content_type


def json_reply(obj, status=200, headers=None) -> Reply:
    return Reply(status, headers, json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def sse_reply(chunks: list[bytes]) -> Reply:
    return Reply(200, {"Cache-Control": "no-cache"}, b"".join(chunks), "text/event-stream")


# ----- Anthropic


def anthropic_error(err: dict) -> Reply:
    status, message, retry_after = error_fields(err)
    etype = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    req_id = new_id("req_")
    headers = {"request-id": req_id}
    if status == 429:
        reset = (datetime.now(timezone.utc) + timedelta(seconds=retry_after)).strftime("%Y-%m-%dT%H:%M:%SZ")
        headers["retry-after"] = fmt_seconds(retry_after)
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            headers[f"anthropic-ratelimit-{kind}-reset"] = reset
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    return json_reply(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": req_id}, status, headers
    )


def anthropic_message(script: dict, p: Parsed, raw_len: int, kind: str) -> Reply:
    model = p.model or "claude-mock"
    msg_id = new_id("msg_")
    in_tokens = estimate_tokens(raw_len)
    blocks = []
    if kind == "tool":
        wf = script["writeFile"]
        blocks.append(
            {
                "type": "tool_use",
                "id": new_id("toolu_"),
                "name": "Write",
                "input": {"file_path": abs_path(p.cwd, wf["path"]), "content": wf.get("content", "")},
            }
        )
        stop = "tool_use"
        out_tokens = output_tokens_for(json.dumps(blocks[0]["input"]))
    else:
        text = script.get("text", DEFAULT_TEXT)
        blocks.append({"type": "text", "text": text})
        stop = "end_turn"
        out_tokens = output_tokens_for(text)
    usage = {
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    if not p.stream:
        return json_reply(
            {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            },
            headers={"request-id": new_id("req_")},
        )
    chunks = [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": dict(usage, output_tokens=1),
                },
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    for i, b in enumerate(blocks):
        if b["type"] == "text":
            chunks.append(
                sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            )
            text = b["text"]
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                if piece:
                    chunks.append(
                        sse(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}},
                        )
                    )
        else:
            chunks.append(
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}},
                    },
                )
            )
            chunks.append(
                sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(b["input"], ensure_ascii=False)},
                    },
                )
            )
        chunks.append(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    chunks.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out_tokens},
            },
        )
    )
    chunks.append(sse("message_stop", {"type": "message_stop"}))
    r = sse_reply(chunks)
    r.headers["request-id"] = new_id("req_")
    return r


# ----- OpenAI Responses


def openai_error(err: dict) -> Reply:
    status, message, retry_after = error_fields(err)
    etype, code = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    }.get(status, ("server_error", None))
    headers = {"x-request-id": new_id("req_")}
    if status == 429:
        headers["retry-after"] = fmt_seconds(retry_after)
        headers["retry-after-ms"] = str(int(retry_after * 1000))
        headers["x-ratelimit-reset-requests"] = f"{fmt_seconds(retry_after)}s"
        headers["x-ratelimit-reset-tokens"] = f"{fmt_seconds(retry_after)}s"
        headers["x-ratelimit-remaining-requests"] = "0"
    return json_reply({"error": {"message": message, "type": etype, "param": None, "code": code}}, status, headers)


def codex_tool_item(script: dict, p: Parsed) -> dict:
    wf = script["writeFile"]
    path = wf["path"]
    content = wf.get("content", "")
    want_patch = script.get("codexTool") == "apply_patch" or (
        "exec_command" not in p.tools and "shell" not in p.tools and "apply_patch" in p.tools
    )
    if want_patch:
        lines = content.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        patch = "*** Begin Patch\n*** Add File: " + path + "\n" + "".join("+" + ln + "\n" for ln in lines) + "*** End Patch"
        return {
            "type": "custom_tool_call",
            "id": new_id("ctc_"),
            "call_id": new_id("call_"),
            "name": "apply_patch",
            "input": patch,
            "status": "completed",
        }
    cmd = f"printf '%s' {shlex.quote(content)} > {shlex.quote(path)}"
    parent = os.path.dirname(path)
    if parent:
        cmd = f"mkdir -p {shlex.quote(parent)} && " + cmd
    if "exec_command" in p.tools or "shell" not in p.tools:
        name, args = "exec_command", {"cmd": cmd}
    else:
        name, args = "shell", {"command": ["bash", "-lc", cmd]}
    return {
        "type": "function_call",
        "id": new_id("fc_"),
        "call_id": new_id("call_"),
        "name": name,
        "arguments": json.dumps(args, ensure_ascii=False),
        "status": "completed",
    }


def openai_response(script: dict, p: Parsed, raw_len: int, kind: str) -> Reply:
    model = p.model or "gpt-mock"
    resp_id = new_id("resp_")
    created = int(time.time())
    in_tokens = estimate_tokens(raw_len)
    if kind == "tool":
        item = codex_tool_item(script, p)
        out_tokens = output_tokens_for(item.get("arguments") or item.get("input") or "")
    else:
        text = script.get("text", DEFAULT_TEXT)
        item = {
            "type": "message",
            "id": new_id("msg_"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        out_tokens = output_tokens_for(text)
    usage = {
        "input_tokens": in_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": in_tokens + out_tokens,
    }

    def response_obj(status, output, with_usage):
        return {
            "id": resp_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
            "usage": usage if with_usage else None,
        }

    if not p.stream:
        return json_reply(response_obj("completed", [item], True))

    seq = iter(range(1_000_000))
    chunks = []

    def ev(name, data):
        data = {"type": name, "sequence_number": next(seq), **data}
        chunks.append(sse(name, data))

    ev("response.created", {"response": response_obj("in_progress", [], False)})
    ev("response.in_progress", {"response": response_obj("in_progress", [], False)})
    if item["type"] == "message":
        text = item["content"][0]["text"]
        ev("response.output_item.added", {"output_index": 0, "item": dict(item, status="in_progress", content=[])})
        ev(
            "response.content_part.added",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}},
        )
        half = len(text) // 2
        for piece in (text[:half], text[half:]):
            if piece:
                ev("response.output_text.delta", {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": piece})
        ev("response.output_text.done", {"item_id": item["id"], "output_index": 0, "content_index": 0, "text": text})
        ev(
            "response.content_part.done",
            {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": item["content"][0]},
        )
    elif item["type"] == "function_call":
        ev("response.output_item.added", {"output_index": 0, "item": dict(item, status="in_progress", arguments="")})
        ev("response.function_call_arguments.delta", {"item_id": item["id"], "output_index": 0, "delta": item["arguments"]})
        ev("response.function_call_arguments.done", {"item_id": item["id"], "output_index": 0, "arguments": item["arguments"]})
    else:  # custom_tool_call
        ev("response.output_item.added", {"output_index": 0, "item": dict(item, status="in_progress", input="")})
        ev("response.custom_tool_call_input.delta", {"item_id": item["id"], "output_index": 0, "delta": item["input"]})
        ev("response.custom_tool_call_input.done", {"item_id": item["id"], "output_index": 0, "input": item["input"]})
    ev("response.output_item.done", {"output_index": 0, "item": item})
    ev("response.completed", {"response": response_obj("completed", [item], True)})
    return sse_reply(chunks)


# ----- Gemini


def gemini_error(err: dict) -> Reply:
    status, message, retry_after = error_fields(err)
    gstatus = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }.get(status, "INTERNAL")
    error = {"code": status, "message": message, "status": gstatus}
    headers = {}
    if status == 429:
        headers["retry-after"] = fmt_seconds(retry_after)
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{fmt_seconds(retry_after)}s"}
        ]
    return json_reply({"error": error}, status, headers)


def value_for_schema(schema) -> object:
    if not isinstance(schema, dict):
        return "mock"
    if schema.get("enum"):
        return schema["enum"][0]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    t = str(t or "object").lower()
    if t == "object" or "properties" in schema:
        return {k: value_for_schema(v) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return []
    if t in ("integer", "number"):
        lo = schema.get("minimum", 1)
        return lo if lo is not None else 1
    if t == "boolean":
        return False
    return "mock"


def gemini_reply(script: dict, body: dict, p: Parsed, raw_len: int, kind: str) -> Reply:
    model = p.model or "gemini-mock"
    in_tokens = estimate_tokens(raw_len)
    gc = body.get("generationConfig") or {}
    json_mode = gc.get("responseMimeType") == "application/json"
    if kind == "tool":
        wf = script["writeFile"]
        parts = [{"functionCall": {"name": "write_file", "args": {"file_path": abs_path(p.cwd, wf["path"]), "content": wf.get("content", "")}}}]
        out_tokens = output_tokens_for(json.dumps(parts))
        pieces = [parts]
    else:
        if json_mode:
            schema = gc.get("responseJsonSchema") or gc.get("responseSchema") or {}
            text = json.dumps(value_for_schema(schema))
        else:
            text = script.get("text", DEFAULT_TEXT)
        out_tokens = output_tokens_for(text)
        half = len(text) // 2
        pieces = [[{"text": t}] for t in (text[:half], text[half:]) if t] or [[{"text": ""}]]
    usage = {"promptTokenCount": in_tokens, "candidatesTokenCount": out_tokens, "totalTokenCount": in_tokens + out_tokens}
    response_id = uuid.uuid4().hex[:20]

    def chunk(parts, last):
        cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
        out = {"candidates": [cand], "modelVersion": model, "responseId": response_id}
        if last:
            cand["finishReason"] = "STOP"
            out["usageMetadata"] = usage
        else:
            out["usageMetadata"] = {"promptTokenCount": in_tokens, "totalTokenCount": in_tokens}
        return out

    if not p.stream:
        all_parts = [x for piece in pieces for x in piece]
        if kind != "tool":
            all_parts = [{"text": "".join(x.get("text", "") for x in all_parts)}]
        return json_reply(chunk(all_parts, True))
    chunks = [sse(None, chunk(piece, i == len(pieces) - 1)) for i, piece in enumerate(pieces)]
    return sse_reply(chunks)


# --------------------------------------------------------------------------- HTTP handler


GEMINI_PATH_RE = re.compile(r"^/(?:v1beta|v1|v1alpha)/models/([^/:]+):(streamGenerateContent|generateContent|countTokens)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-provider/1"
    state: State  # set on the class by main()

    def log_message(self, fmt, *args):  # keep stderr quiet
        pass

    # ---- body

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        enc = self.headers.get("Content-Encoding", "").lower()
        if enc == "gzip":
            data = gzip.decompress(data)
        elif enc == "deflate":
            data = zlib.decompress(data)
        return data

    def send(self, r: Reply):
        try:
            self.send_response(r.status)
            self.send_header("Content-Type", r.content_type)
            self.send_header("Content-Length", str(len(r.body)))
            for k, v in r.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(r.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- dispatch

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def handle_any(self):
        st = self.state
        seq = st.next_seq()
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        h = {k.lower(): v for k, v in self.headers.items()}
        entry = {
            "seq": seq,
            "ts": round(time.time(), 3),
            "api": "other",
            "method": self.command,
            "path": path,
            "query": query,
            "model": None,
            "stream": None,
            "system": None,
            "userPrompt": None,
            "userTexts": [],
            "messageCount": 0,
            "lastIsToolResult": False,
            "headers": {
                "user-agent": h.get("user-agent"),
                "x-api-key": "x-api-key" in h,
                "authorization": "authorization" in h,
                "x-goog-api-key": "x-goog-api-key" in h,
                "anthropic-version": h.get("anthropic-version"),
                "originator": h.get("originator"),
                "session-id": h.get("session-id") or h.get("x-claude-code-session-id"),
            },
        }
        try:
            raw = self.read_body() if self.command in ("POST", "PUT") else b""
        except Exception as e:  # noqa: BLE001
            raw = b""
            entry["bodyError"] = f"cannot read body: {e}"
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                entry["bodyError"] = f"not JSON: {e}"
        st.dump(seq, body if body is not None else raw.decode("utf-8", "replace"))

        reply, delay = self.route(path, body if isinstance(body, dict) else {}, len(raw), entry)
        entry["reply"] = entry.get("reply") or ("error" if reply.status >= 400 else "ok")
        entry["status"] = reply.status
        entry["delayMs"] = delay
        st.log(entry)
        if delay:
            time.sleep(delay / 1000.0)
        self.send(reply)

    def route(self, path: str, body: dict, raw_len: int, entry: dict) -> tuple[Reply, int]:
        st = self.state
        cmd = self.command
        if cmd == "HEAD" and path == "/":
            entry["api"] = "anthropic"
            entry["reply"] = "preflight"
            return Reply(200, {}, b"", "text/plain"), 0

        api = kind = None
        parsed = None
        if cmd == "POST" and path == "/v1/messages/count_tokens":
            entry["api"] = "anthropic"
            parsed = parse_anthropic(body)
            self.fill(entry, parsed)
            entry["reply"] = "count_tokens"
            return json_reply({"input_tokens": estimate_tokens(raw_len)}), 0
        if cmd == "POST" and path in ("/v1/messages", "/messages"):
            api, parsed = "anthropic", parse_anthropic(body)
        elif cmd == "POST" and path in ("/v1/responses", "/responses"):
            api, parsed = "openai", parse_openai(body)
        else:
            m = GEMINI_PATH_RE.match(path)
            if cmd == "POST" and m:
                model, method = m.group(1), m.group(2)
                if method == "countTokens":
                    entry["api"] = "gemini"
                    entry["model"] = model
                    entry["reply"] = "count_tokens"
                    return json_reply({"totalTokens": estimate_tokens(raw_len)}), 0
                api = "gemini"
                parsed = parse_gemini(body, model, method == "streamGenerateContent")
        if api is None:
            entry["reply"] = "not_found"
            return json_reply({"error": {"type": "not_found", "message": f"mock provider: no route for {cmd} {path}"}}, 404), 0

        entry["api"] = api
        self.fill(entry, parsed)
        script = st.load_script()
        delay = int(script.get("delayMs") or 0)
        bearer = script.get("requireBearer")
        if bearer is not None and self.headers.get("Authorization", "") != f"Bearer {bearer}":
            entry["reply"] = "error"
            entry["authRejected"] = True
            maker = {"anthropic": anthropic_error, "openai": openai_error, "gemini": gemini_error}[api]
            return maker({"status": 401, "message": "mock provider: expected Authorization: Bearer <the token>"}), 0
        err = st.take_error(script)
        if err is not None:
            entry["reply"] = "error"
            maker = {"anthropic": anthropic_error, "openai": openai_error, "gemini": gemini_error}[api]
            return maker(err), delay
        kind = decide(script, parsed)
        entry["reply"] = kind
        if api == "gemini" and (body.get("generationConfig") or {}).get("responseMimeType") == "application/json":
            entry["reply"] = "json"  # a side request (e.g. the model router): answered with schema-shaped JSON
        if api == "anthropic":
            return anthropic_message(script, parsed, raw_len, kind), delay
        if api == "openai":
            return openai_response(script, parsed, raw_len, kind), delay
        return gemini_reply(script, body, parsed, raw_len, kind), delay

    @staticmethod
    def fill(entry: dict, p: Parsed):
        entry.update(
            model=p.model,
            stream=p.stream,
            system=p.system,
            userPrompt=p.user_prompt,
            userTexts=p.user_texts,
            messageCount=p.message_count,
            lastIsToolResult=p.last_is_tool_result,
            tools=p.tools,
            cwd=p.cwd,
        )


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--script", help="scenario JSON, re-read on every request")
    ap.add_argument("--log", help="append one JSON line per request here")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    ap.add_argument("--dump-dir", help="also write each full request body to DIR/NNNN.json (debugging)")
    ap.add_argument("--no-stdin-watch", action="store_true", help="do not exit on stdin EOF")
    args = ap.parse_args()

    Handler.state = State(args.script, args.log, args.dump_dir)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True

    def bye(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    if not args.no_stdin_watch:

        def watch_stdin():
            try:
                while sys.stdin.buffer.read1(65536):
                    pass
            except Exception:  # noqa: BLE001  (closed or invalid stdin counts as EOF)
                pass
            os._exit(0)

        threading.Thread(target=watch_stdin, daemon=True).start()

    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
