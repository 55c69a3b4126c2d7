"""The query service on a real nats-server, engine and projection: every query, consistency, bad input, load sharing.

`python -m tests.integration.test_query_service` measures query latency (weak and strong); it is not a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest

from engine.exchange import APP as EXCHANGE
from events.model import Fill, decode
from events.stream_readers import last_seq
from projections.query_service import MAX_REQUEST_BYTES, QUERIES
from protocol.subjects import EVT_STREAM
from tests.conftest import wait_until
from tests.integration.gateway_harness import running_query_service as query_service
from tests.integration.harness import (
    projection_position,
    publish_all,
    read_all,
    running_engine,
    running_projection,
    wait_for_command,
    workload,
)


async def ask(nc: Any, name: str, body: dict[str, Any] | None = None, *, as_json: bool = False) -> dict[str, Any]:
    body = body or {}
    if as_json:
        msg = await nc.request(
            f"jb.qry.{name}", json.dumps(body).encode(), timeout=10, headers={"Content-Type": "application/json"}
        )
        assert msg.headers["Content-Type"] == "application/json"
        answer: dict[str, Any] = json.loads(msg.data)
    else:
        msg = await nc.request(f"jb.qry.{name}", msgpack.packb(body), timeout=10)
        answer = msgpack.unpackb(msg.data)
    if "error" in answer:
        assert msg.headers.get("Nats-Service-Error-Code")  # what micro-aware clients look at
    return answer


def place(coid: str, side: str, price: int, qty: int) -> bytes:
    return bytes(msgpack.packb({"type": "place_order", "client_order_id": coid, "side": side, "price": price,
                                "qty": qty}))  # fmt: skip


def create(market: str) -> tuple[str, bytes]:
    return f"jb.ctl.{market}", bytes(msgpack.packb({"type": "create_market", "market_id": market, "base": "B",
                                                    "quote": "Q"}))  # fmt: skip


@pytest.fixture
async def stack(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> AsyncIterator[tuple[Any, Path]]:
    """An engine, a projection and one query service, with a market M holding one trade and two resting orders."""
    db = tmp_path / "rm.db"
    commands = [
        create("M"),
        ("jb.cmd.M.alice", place("a1", "sell", 101, 5)),
        ("jb.cmd.M.bob", place("b1", "buy", 101, 2)),  # trades 2 with a1
        ("jb.cmd.M.bob", place("b2", "buy", 99, 4)),
    ]
    last_cmd = await publish_all(js, commands)
    async with running_engine(nc), running_projection(js, db), query_service(nats_server.url, db):
        await wait_for_command(js, last_cmd)
        end = await last_seq(js, EVT_STREAM)

        async def folded() -> bool:
            return projection_position(db) == end

        await wait_until(folded, what="the projection to fold the setup")
        yield js, db


async def test_every_query_answers_with_the_position_it_reflects(nc: Any, stack: tuple[Any, Path]) -> None:
    js, db = stack
    end = await last_seq(js, EVT_STREAM)
    asked: list[tuple[str, dict[str, Any]]] = [
        ("markets", {}),
        ("top_of_book", {"market_id": "M", "depth": 1}),
        ("snapshot", {"market_id": "M"}),
        ("fills", {"market_id": "M", "account_id": "bob"}),
        ("order_count", {"market_id": "M"}),
        ("orders", {"market_id": "M", "status": "all"}),
        ("order", {"market_id": "M", "account_id": "bob", "client_order_id": "b2"}),
        ("completed_orders", {"market_id": "M"}),
        ("risk", {"market_id": "M", "account_id": "bob"}),
    ]
    answers = {name: await ask(nc, name, body) for name, body in asked}
    assert set(answers) == set(QUERIES)
    for name, answer in answers.items():
        assert "error" not in answer, (name, answer)
        assert answer["at_seq"] == end == projection_position(db), name
    assert [m["market_id"] for m in answers["markets"]["result"]] == ["M"]
    (book,) = answers["top_of_book"]["result"]["books"]
    assert book["bids"] == [{"price": 99, "qty": 4, "orders": 1}]
    assert book["asks"] == [{"price": 101, "qty": 3, "orders": 1}]
    snap = answers["snapshot"]["result"]
    assert snap["market"]["last_price"] == 101 and snap["market"]["state"] == "open"
    assert snap["ladders"][0]["asks"] == book["asks"]
    (trade,) = answers["fills"]["result"]
    assert (trade["qty"], trade["taker_account"], trade["maker_account"]) == (2, "bob", "alice")
    assert trade["seq"] <= end
    assert answers["order_count"]["result"] == 2  # a1 partly filled, b2 open
    assert [o["client_order_id"] for o in answers["orders"]["result"]] == ["a1", "b1", "b2"]
    b2 = answers["order"]["result"]
    assert (b2["status"], b2["open_qty"]) == ("open", 4)
    by_id = await ask(nc, "order", {"market_id": "M", "order_id": b2["order_id"]})
    assert by_id["result"] == b2
    assert [o["client_order_id"] for o in answers["completed_orders"]["result"]] == ["b1"]
    (bob,) = answers["risk"]["result"]["accounts"]
    assert (bob["net_qty"], bob["cash"], bob["open_orders"], bob["open_exposure"]) == (2, -202, 1, 396)
    assert answers["risk"]["result"]["positions"][0]["net_qty"] == 2


async def test_json_and_msgpack_give_the_same_answer(nc: Any, stack: tuple[Any, Path]) -> None:
    for name, body in (("snapshot", {"market_id": "M", "depth": 3}), ("orders", {"account_id": "bob"})):
        assert await ask(nc, name, body, as_json=True) == await ask(nc, name, body)


async def test_a_strong_read_sees_a_write_the_engine_had_not_decided_when_it_arrived(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    """No engine when the query arrives: the answer must wait for the decision, then for the fold."""
    db = tmp_path / "rm.db"
    await publish_all(js, [create("M")])
    async with running_projection(js, db), query_service(nats_server.url, db):
        ack = await js.publish("jb.cmd.M.carol", place("c1", "buy", 50, 1))
        pending = asyncio.create_task(
            ask(nc, "order", {"market_id": "M", "account_id": "carol", "client_order_id": "c1",
                              "consistency": "strong", "timeout_ms": 20_000})
        )  # fmt: skip
        # No engine runs, so no answer may come: half a second of silence is the thing asserted, not a wait for it.
        done, _ = await asyncio.wait({pending}, timeout=0.5)
        assert not done
        async with running_engine(nc):
            answer = await pending
            assert answer["result"]["client_order_id"] == "c1", answer
            assert answer["result"]["created_seq"] <= answer["at_seq"]
            # Then, with the engine running: each PubAck followed at once by a strong read sees its write.
            for i in range(20):
                ack = await js.publish("jb.cmd.M.carol", place(f"n{i}", "buy", 40 + i, 1))
                seen = await ask(nc, "order_count", {"market_id": "M", "account_id": "carol",
                                                     "consistency": "strong"})  # fmt: skip
                assert seen["result"] == i + 2, (ack.seq, seen)


async def test_strong_on_an_empty_command_log_answers_at_once(nats_server: Any, js: Any, tmp_path: Path) -> None:
    db = tmp_path / "rm.db"
    async with running_projection(js, db):
        await wait_until(lambda: _exists(db), what="the read model file")
        async with query_service(nats_server.url, db):
            answer = await ask(js._nc, "markets", {"consistency": "strong", "timeout_ms": 2000})
    assert answer == {"at_seq": 0, "result": []}


async def _exists(db: Path) -> bool:
    return projection_position(db) == 0 and db.exists()


async def test_waits_past_their_deadline_say_both_positions(nc: Any, js: Any, stack: tuple[Any, Path]) -> None:
    end = await last_seq(js, EVT_STREAM)
    answer = await ask(nc, "markets", {"min_seq": end + 1000, "timeout_ms": 200})
    assert answer["error"] == "timeout"
    assert (answer["at_seq"], answer["wanted_seq"]) == (end, end + 1000)
    assert str(end + 1000) in answer["detail"]
    # The service still answers at once afterwards.
    assert (await ask(nc, "markets", {"min_seq": end}))["at_seq"] == end


async def test_a_strong_read_with_no_engine_times_out_with_the_command_it_waited_for(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    db = tmp_path / "rm.db"
    await publish_all(js, [create("M"), create("N")])
    async with running_projection(js, db), query_service(nats_server.url, db):
        answer = await ask(nc, "markets", {"consistency": "strong", "timeout_ms": 300}, as_json=True)
    assert answer["error"] == "timeout"
    assert (answer["at_seq"], answer["wanted_cmd_seq"], answer["evt_seq"]) == (0, 2, 0)


async def test_weak_reads_during_a_fold_report_the_position_of_their_data(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    """While the projection folds a workload, every weak `fills` answer holds exactly the fills up to its at_seq."""
    db = tmp_path / "rm.db"
    last_cmd = await publish_all(js, workload(3000, seed=7, markets=("M1",)))
    async with running_engine(nc):
        await wait_for_command(js, last_cmd, timeout=60)
    fill_seqs = [m.seq for m in await read_all(js, EVT_STREAM) if isinstance(decode(m.data), Fill)]
    end = await last_seq(js, EVT_STREAM)
    seen: list[tuple[int, list[int]]] = []
    async with query_service(nats_server.url, db), running_projection(js, db):
        while not seen or seen[-1][0] < end:
            answer = await ask(nc, "fills", {"market_id": "M1", "limit": 10_000})
            if "error" not in answer:  # `unavailable` until the projection has created the file
                seen.append((answer["at_seq"], [t["seq"] for t in answer["result"]]))
    assert len({at for at, _ in seen}) > 1  # it did read during the fold
    for at, seqs in seen:
        assert seqs == [s for s in fill_seqs if s <= at], at


BAD: list[tuple[str, bytes, bool, str]] = [
    ("nope", b"", False, "unknown_query"),
    ("a.b.c", b"{}", True, "unknown_query"),
    ("markets", b"\xc1", False, "bad_request"),
    ("markets", b"{", True, "bad_request"),
    ("markets", b"[1]", True, "bad_request"),
    ("markets", b"[" * 5000 + b"]" * 5000, True, "bad_request"),
    ("markets", b'{"min_seq": NaN}', True, "invalid"),
    ("markets", b"x" * (MAX_REQUEST_BYTES + 1), True, "too_large"),
    ("snapshot", b"{}", True, "invalid"),
    ("snapshot", b'{"market_id": 5}', True, "invalid"),
    ("snapshot", b'{"market_id": "' + b"M" * 1000 + b'"}', True, "invalid"),
    ("snapshot", b'{"market_id": "M", "depth": 0}', True, "invalid"),
    ("snapshot", b'{"market_id": "M", "depth": 100000000000000000000000000000}', True, "invalid"),
    ("snapshot", b'{"market_id": "M", "depth": true}', True, "invalid"),
    ("snapshot", b'{"market_id": "M", "depth": "5"}', True, "invalid"),
    ("snapshot", b'{"market_id": "M", "color": "red"}', True, "invalid"),
    ("snapshot", b'{"market_id": "nosuch"}', True, "not_found"),
    ("orders", b'{"status": "bogus"}', True, "invalid"),
    ("orders", b'{"consistency": "eventual"}', True, "invalid"),
    ("orders", b'{"timeout_ms": 0}', True, "invalid"),
    ("orders", b'{"min_seq": -1}', True, "invalid"),
    ("order", b'{"market_id": "M"}', True, "invalid"),
    ("order", b'{"market_id": "M", "order_id": 999}', True, "not_found"),
    ("fills", msgpack.packb({"market_id": "M", "limit": 2**63}), False, "invalid"),
    ("fills", msgpack.packb({"market_id": b"M"}), False, "invalid"),
    ("fills", msgpack.packb({1: "M"}), False, "bad_request"),  # a map key that is not a string
    ("fills", msgpack.packb({"market_id": "M", "from_seq": 1.5}), False, "invalid"),
]


async def test_bad_input_gets_an_error_code_and_a_detail(nc: Any, stack: tuple[Any, Path]) -> None:
    for name, data, as_json, code in BAD:
        headers = {"Content-Type": "application/json"} if as_json else None
        msg = await nc.request(f"jb.qry.{name}", data, timeout=5, headers=headers)
        answer = json.loads(msg.data) if as_json else msgpack.unpackb(msg.data, strict_map_key=False)
        assert answer.get("error") == code, (name, data[:60], answer)
        assert answer["detail"] and msg.headers["Nats-Service-Error-Code"], answer
    assert "result" in await ask(nc, "markets")  # still serving


async def test_two_instances_share_the_load(nats_server: Any, nc: Any, stack: tuple[Any, Path]) -> None:
    _, db = stack
    async with query_service(nats_server.url, db) as second:
        before = second.answered
        answers = await asyncio.gather(*(ask(nc, "order_count", {"market_id": "M"}) for _ in range(200)))
        assert all(a["result"] == 2 for a in answers)
        assert second.answered - before > 0  # the fixture's instance answered the rest
        assert second.answered - before < 200


async def test_micro_ping_info_and_stats_answer(nc: Any, stack: tuple[Any, Path]) -> None:
    await ask(nc, "markets")
    await ask(nc, "markets", {"min_seq": 10**9, "timeout_ms": 50})  # an error, counted
    info = json.loads((await nc.request("$SRV.INFO.jetbook-query", b"", timeout=5)).data)
    assert info["name"] == "jetbook-query"
    subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
    assert {name: f"jb.qry.{name}" for name in QUERIES}.items() <= subjects.items()
    stats = json.loads((await nc.request("$SRV.STATS.jetbook-query", b"", timeout=5)).data)
    markets = next(e for e in stats["endpoints"] if e["name"] == "markets")
    assert markets["num_requests"] >= 2 and markets["num_errors"] >= 1 and markets["queue_group"] == "jb-qry"
    assert markets["processing_time"] > 0
    ping = json.loads((await nc.request("$SRV.PING.jetbook-query", b"", timeout=5)).data)
    assert ping["name"] == "jetbook-query"


async def test_a_rebuilt_file_swapped_in_is_read(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    """`replay rebuild` puts a symlink at the path; the service reads the file it now names."""
    from projections.runner import ProjectionRunner

    last_cmd = await publish_all(js, [create("A")])
    async with running_engine(nc):
        await wait_for_command(js, last_cmd)
    first = await last_seq(js, EVT_STREAM)
    gen1, gen2, path = tmp_path / "gen1.db", tmp_path / "gen2.db", tmp_path / "rm.db"
    await ProjectionRunner(EXCHANGE, js, gen1).run(asyncio.Event(), until_seq=first)
    os.symlink(gen1, path)
    async with query_service(nats_server.url, path) as service:
        assert [m["market_id"] for m in (await ask(nc, "markets"))["result"]] == ["A"]
        last_cmd = await publish_all(js, [create("B")])
        async with running_engine(nc):
            await wait_for_command(js, last_cmd)
        end = await last_seq(js, EVT_STREAM)
        await ProjectionRunner(EXCHANGE, js, gen2).run(asyncio.Event(), until_seq=end)
        tmp = tmp_path / "rm.db.new"
        os.symlink(gen2, tmp)
        os.replace(tmp, path)
        answer = await ask(nc, "markets", {"min_seq": end})
        assert answer["at_seq"] == end and [m["market_id"] for m in answer["result"]] == ["A", "B"]
        assert service.replica.reopened == 1


# --- latency (run by hand: python -m tests.integration.test_query_service) -----------------------------------


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def _measure(n: int = 2000) -> None:
    import tempfile

    from jetbook.server import EmbeddedServer
    from protocol.streams import ensure_streams

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "nats", port=0)
        server.start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            db = Path(tmp) / "rm.db"
            last_cmd = await publish_all(js, workload(20_000, seed=1, markets=("M1",)))
            async with running_engine(nc), running_projection(js, db), query_service(server.url, db):
                await wait_for_command(js, last_cmd, timeout=120)
                end = await last_seq(js, EVT_STREAM)

                async def folded() -> bool:
                    return projection_position(db) >= end

                await wait_until(folded, timeout=120, what="the projection to fold the workload")
                for label, body in (
                    ("weak top_of_book", {"market_id": "M1", "depth": 10}),
                    ("strong top_of_book (idle log)", {"market_id": "M1", "depth": 10, "consistency": "strong"}),
                ):
                    times = []
                    for _ in range(n):
                        t = time.perf_counter()
                        await ask(nc, "top_of_book", body)
                        times.append((time.perf_counter() - t) * 1e3)
                    print(f"{label:45} p50 {_pct(times, 0.5):.3f} ms  p99 {_pct(times, 0.99):.3f} ms  (n={n})")
                times = []
                for i in range(n // 4):
                    await js.publish("jb.cmd.M1.zed", place(f"z{i}", "buy", 900, 1))
                    t = time.perf_counter()
                    answer = await ask(nc, "order_count", {"market_id": "M1", "account_id": "zed",
                                                           "consistency": "strong"})  # fmt: skip
                    times.append((time.perf_counter() - t) * 1e3)
                    assert answer["result"] == i + 1
                label = "strong after own write (PubAck -> answer)"
                print(f"{label:45} p50 {_pct(times, 0.5):.3f} ms  p99 {_pct(times, 0.99):.3f} ms  (n={n // 4})")
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(_measure())


async def test_hostile_cli_arguments_are_refused_and_the_venue_still_decides(
    nats_server: Any, nc: Any, stack: tuple[Any, Path]
) -> None:
    """`jetbook query`'s arguments are a new input surface: odd names and fields get a clean refusal or an error
    answer (exit 1 or 2, never a traceback), and the venue then decides a valid order that a strong query sees."""
    import subprocess
    import sys

    js, _ = stack
    hostile = [
        [">"], ["top_of_book.x"], ["a b"], ["*"], ["é"], ["x" * 200],
        ["top_of_book", "depth"], ["top_of_book", "=x"], ["top_of_book", "depth=1e999"],
        ["top_of_book", "market_id=" + "x" * 100_000], ["top_of_book", "depth=[[[[[[[[[[1]]]]]]]]]]"],
        ["order", "order_id=-9223372036854775809", "market_id=M"], ["markets", "--min-seq", "-5"],
    ]  # fmt: skip
    slots = asyncio.Semaphore(4)  # the runs are independent: four at a time, not one after another

    async def run(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[bytes]]:
        async with slots:
            return args, await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "jetbook", "query", *args, "--nats-url", nats_server.url, "--timeout-ms", "500"],
                capture_output=True, timeout=60,
            )  # fmt: skip

    for args, done in await asyncio.gather(*(run(a) for a in hostile)):
        assert done.returncode in (1, 2), (args, done.returncode, done.stderr[-500:])
        assert b"Traceback" not in done.stderr, (args, done.stderr[-2000:])
    await js.publish("jb.cmd.M.carol", place("c9", "sell", 120, 1))
    answer = await ask(nc, "order", {"market_id": "M", "account_id": "carol", "client_order_id": "c9",
                                     "consistency": "strong"})  # fmt: skip
    assert answer["result"]["status"] == "open", answer
