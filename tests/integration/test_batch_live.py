"""Batch order entry (issue 14 section 2) on a real nats-server: the log, the CLI, POST /commands and /ws_ctl.

A place_orders of 50 instructions is one command in JB_CMD and one atomic batch in JB_EVT (one cmd_seq, one
Nats-Batch-Id, contiguous), and the log re-decides to its bytes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import connect

from engine.commit import HDR_BATCH_ID
from events.model import OrderAccepted, OrderCancelled, Rejected, decode
from protocol.subjects import EVT_STREAM
from tests.integration.gateway_harness import gateway_stack
from tests.integration.harness import assert_log_is_exact, publish_all, read_all, running_engine, wait_for_command

JETBOOK = [sys.executable, "-m", "jetbook"]


def _cmd(subject: str, body: dict[str, Any]) -> tuple[str, bytes]:
    return subject, bytes(msgpack.packb(body))


def _quote(i: int) -> dict[str, Any]:
    side = "buy" if i % 2 else "sell"
    return {"client_order_id": f"q{i}", "side": side, "price": 100 - 1 - i // 2 if i % 2 else 100 + i // 2, "qty": 2}


async def test_a_place_orders_of_50_is_one_atomic_batch_with_one_cmd_seq_then_cancel_orders(nc: Any, js: Any) -> None:
    commands = [
        _cmd("jb.ctl.M", {"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}),
        _cmd("jb.cmd.M.taker", {"type": "place_order", "client_order_id": "t", "side": "buy", "price": 101, "qty": 3}),
        _cmd("jb.cmd.M.mm", {"type": "place_orders", "instructions": [_quote(i) for i in range(50)]}),
        _cmd("jb.cmd.M.mm", {"type": "cancel_orders",
                             "instructions": [{"client_order_id": f"q{i}"} for i in range(50)]}),
    ]  # fmt: skip
    last = await publish_all(js, commands)
    async with running_engine(nc):
        await wait_for_command(js, last)
    stored = await read_all(js, EVT_STREAM)
    events = [(m, decode(m.data)) for m in stored]
    batch = [(m, e) for m, e in events if e.cmd_seq == 3]
    seqs = [m.seq for m, _ in batch]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a command's events are contiguous"
    assert len({(m.headers or {}).get(HDR_BATCH_ID) for m, _ in batch}) == 1, "one atomic batch"
    accepted = [e for _, e in batch if isinstance(e, OrderAccepted)]
    assert [e.client_order_id for e in accepted] == [f"q{i}" for i in range(50)]
    assert sum(e.type == "fill" for _, e in batch) == 2  # the sells at 100 and 101 met the taker's buy
    cancels = [e for m, e in events if e.cmd_seq == 4]
    assert all(isinstance(e, OrderCancelled | Rejected) for e in cancels) and len(cancels) == 50
    assert sum(isinstance(e, OrderCancelled) for e in cancels) == 49  # q0 was filled whole: order_not_open
    assert [e.index for e in cancels if isinstance(e, Rejected)] == [0]
    await assert_log_is_exact(js)  # JB_CMD re-decided gives JB_EVT byte for byte


async def test_a_hostile_compact_is_refused_and_the_venue_still_decides(nc: Any, js: Any) -> None:
    """`compact` (v1.3) over NATS with every wrong shape, on every batch command and on place_order, and a forged
    `orders_accepted` sent as a command: each is refused with a reason, nothing rests, the log re-decides to its
    bytes, and a valid compact batch after them is decided."""
    quotes = [_quote(1), _quote(2)]
    hostile: list[tuple[str, Any, str]] = [
        ("place_orders", 1, "invalid_field"), ("place_orders", "true", "invalid_field"),
        ("place_orders", [], "invalid_field"), ("place_orders", {"a": 1}, "invalid_field"),
        ("place_orders", 2**63, "invalid_field"), ("cancel_orders", 0, "invalid_field"),
        ("replace_orders", True, "unknown_field"), ("place_order", True, "unknown_field"),
    ]  # fmt: skip
    bodies: dict[str, dict[str, Any]] = {
        "place_orders": {"type": "place_orders", "instructions": quotes},
        "cancel_orders": {"type": "cancel_orders", "instructions": [{"client_order_id": "q1"}]},
        "replace_orders": {"type": "replace_orders", "instructions": [{"client_order_id": "q1", "qty": 1}]},
        "place_order": {"type": "place_order", **_quote(1)},
    }
    forged = {"type": "orders_accepted", "account_id": "mm", "orders": [[1, "x", "buy", 99, 2, "gtc", None, "limit",
                                                                         "cancel_resting", "lapse"]]}  # fmt: skip
    commands = [_cmd("jb.ctl.M", {"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"})]
    commands += [_cmd("jb.cmd.M.mm", {**bodies[kind], "compact": value}) for kind, value, _ in hostile]
    commands += [_cmd("jb.cmd.M.mm", forged), _cmd("jb.cmd.M.mm", {**bodies["place_orders"], "compact": True})]
    last = await publish_all(js, commands)
    async with running_engine(nc):
        await wait_for_command(js, last)
    events = [decode(m.data) for m in await read_all(js, EVT_STREAM)]
    by_cmd = {seq: [e for e in events if e.cmd_seq == seq] for seq in range(2, last + 1)}
    for seq, (kind, value, reason) in enumerate(hostile, 2):
        got = by_cmd[seq]
        assert len(got) == 1 and isinstance(got[0], Rejected) and got[0].reason == reason, (kind, value, got)
    assert [(e.type, getattr(e, "reason", None)) for e in by_cmd[last - 1]] == [("rejected", "unknown_type")]
    valid = by_cmd[last]
    assert [e.type for e in valid] == ["orders_accepted"] and [r[1] for r in valid[0].orders] == ["q1", "q2"]
    await assert_log_is_exact(js)


async def test_the_cli_post_commands_and_ws_ctl_take_batches(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    async with gateway_stack(nats_server, nc, js, tmp_path) as stack, httpx.AsyncClient(base_url=stack.url) as c:
        r = await c.post("/commands", json={"market_id": "M", "command": {
            "type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}})  # fmt: skip
        assert r.status_code == 200, r.text

        # POST /commands: one bad instruction among good ones is that instruction's reject, not a refused command
        batch = {"type": "place_orders", "instructions": [_quote(0), {**_quote(2), "qty": 0}, _quote(4)]}
        r = await c.post("/commands", json={"market_id": "M", "account_id": "mm", "command": batch})
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        assert [(e["type"], e.get("index")) for e in events] == [
            ("order_accepted", None), ("rejected", 1), ("order_accepted", None)
        ]  # fmt: skip
        # all_or_none refuses every instruction: a refused command, 422 with the first failure's reason
        r = await c.post(
            "/commands", json={"market_id": "M", "account_id": "mm", "command": {**batch, "all_or_none": True}}
        )
        assert r.status_code == 422 and r.json()["error"] == "duplicate_client_order_id", r.text
        assert [e["index"] for e in r.json()["events"]] == [0, 1, 2]
        r = await c.post("/commands", json={"market_id": "M", "account_id": "mm", "command": {
            "type": "cancel_orders", "instructions": [{"order_id": 1}] * 201}})  # fmt: skip
        assert r.status_code == 422 and r.json()["error"] == "too_many_instructions", r.text
        # v1.3 compact: the quotes that rest untouched are one orders_accepted; a compact that is not a bool is refused
        compact = {
            "type": "place_orders",
            "compact": True,
            "instructions": [_quote(6), _quote(8), {**_quote(9), "qty": 0}],
        }
        r = await c.post("/commands", json={"market_id": "M", "account_id": "mm", "command": compact})
        assert r.status_code == 200, r.text
        assert [(e["type"], len(e.get("orders", [])), e.get("index")) for e in r.json()["events"]] == [
            ("orders_accepted", 2, None), ("rejected", 0, 2)
        ]  # fmt: skip
        r = await c.post("/commands", json={"market_id": "M", "account_id": "mm", "command": {**compact, "compact": 1}})
        assert r.status_code == 422, r.text

        # /ws_ctl: a replace_orders, answered with its events
        ws_url = stack.url.replace("http://", "ws://") + "/ws_ctl"
        frame = {
            "type": "replace_orders",
            "correlation_id": "r",
            "market_id": "M",
            "account_id": "mm",
            "instructions": [{"client_order_id": "q0", "qty": 1}, {"client_order_id": "q4", "price": 105}],
        }
        async with connect(ws_url) as ctl:
            await ctl.send(json.dumps(frame))
            replies: list[dict[str, Any]] = []
            while len(replies) < 2:  # the ack and the order_response; any other frame is not this command's
                reply = json.loads(await asyncio.wait_for(ctl.recv(), 15))
                if reply.get("correlation_id") == "r":
                    replies.append(reply)
        assert [f["type"] for f in replies] == ["ack", "order_response"], replies
        response = replies[1]
        assert response["rejected"] is None
        assert [(e["type"], e["priority"]) for e in response["events"]] == [
            ("order_amended", "kept"),
            ("order_amended", "lost"),
        ]
        pull = {"type": "cancel_orders", "correlation_id": "p", "market_id": "M", "account_id": "mm", "compact": True,
                "instructions": [{"client_order_id": "q6"}, {"client_order_id": "q8"}]}  # fmt: skip
        async with connect(ws_url) as ctl:
            await ctl.send(json.dumps({**pull, "correlation_id": "h", "compact": "yes"}))  # hostile: refused
            while (reply := json.loads(await asyncio.wait_for(ctl.recv(), 15))).get("correlation_id") != "h":
                pass
            assert reply["type"] == "error" and reply["error"] == "invalid_field", reply
            await ctl.send(json.dumps(pull))
            while (reply := json.loads(await asyncio.wait_for(ctl.recv(), 15))).get("type") != "order_response":
                pass
        assert [(e["type"], e["reason"], len(e["orders"])) for e in reply["events"]] == [
            ("orders_cancelled", "user", 2)
        ]

        # the CLI: a JSON-lines file of cancels, sent and answered while the engine runs
        lines = tmp_path / "cancels.jsonl"
        lines.write_text('{"client_order_id": "q0"}\n{"client_order_id": "q4"}\n')
        done = await asyncio.to_thread(
            subprocess.run,
            [*JETBOOK, "submit", "cancel-orders", "-m", "M", "-a", "mm", "--from-file", str(lines),
             "--nats-url", stack.nats_url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        printed = [json.loads(line) for line in done.stdout.splitlines()]  # sent compact: one orders_cancelled
        assert [(e["type"], e["reason"], [row[2] for row in e["orders"]]) for e in printed] == [
            ("orders_cancelled", "user", ["q0", "q4"]),
        ]


def test_a_hostile_batch_file_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    nowhere = "nats://127.0.0.1:1"
    cases = {
        "deep.json": "[" * 100_000,
        "garbage.json": "\x00\xff not json",
        "bad.jsonl": '{"client_order_id": "a", "side": "buy", "price": 1, "qty": 1}\n{"side": "up"}\n',
        "many.json": json.dumps(
            [{"client_order_id": f"c{i}", "side": "buy", "price": 1, "qty": 1} for i in range(201)]
        ),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, errors="surrogateescape")
    for name in cases:
        done = subprocess.run(
            [*JETBOOK, "submit", "place-orders", "-m", "M", "-a", "a", "--from-file", str(tmp_path / name),
             "--nats-url", nowhere],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.startswith("error: "), (name, done.stderr)
        assert "Traceback" not in done.stderr and "cannot reach NATS" not in done.stderr, (name, done.stderr)
        assert name != "many.json" or "too_many_instructions" in done.stderr, done.stderr
