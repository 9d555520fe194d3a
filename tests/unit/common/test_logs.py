"""Structured logs (dfs/common/logs.py): JSON lines with the process and the operation id."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from dfs.common import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(s: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in s.getvalue().splitlines()]


def test_json_lines_name_the_process_and_the_operation(restore_logging):
    out = io.StringIO()
    logs.setup("meta[0.1]", stream=out, fmt="json")
    log = logging.getLogger("dfs.test")

    async def request(rid: bytes, n: int) -> None:
        logs.set_op(rid)  # in a task of its own, as a server's request handler
        await asyncio.sleep(0)
        log.info("serving %d", n)

    async def main() -> None:
        log.info("before")
        await asyncio.gather(request(b"\x01\x02", 1), request(b"\xff", 2))
        log.info("after")

    asyncio.run(main())
    got = lines(out)
    assert [g["message"] for g in got] == ["before", "serving 1", "serving 2", "after"]
    assert all(g["proc"] == "meta[0.1]" and g["level"] == "INFO" and g["logger"] == "dfs.test" and g["time"]
               for g in got)
    assert "op" not in got[0] and "op" not in got[3]  # outside requests
    assert (got[1]["op"], got[2]["op"]) == ("0102", "ff")


def test_exceptions_stay_in_one_line(restore_logging):
    out = io.StringIO()
    logs.setup("data[2]", stream=out, fmt="json")
    token = logs.set_op("c1.7")
    try:
        raise ZeroDivisionError("x")
    except ZeroDivisionError:
        logging.getLogger("dfs.test").exception("failed")
    finally:
        logs.reset_op(token)
    (g,) = lines(out)
    assert g["op"] == "c1.7" and "ZeroDivisionError" in g["exc_info"]
    assert logs.current_op() is None


def test_text_format(restore_logging):
    out = io.StringIO()
    logs.setup("mgmt[0]", stream=out, fmt="text")
    token = logs.set_op("ab")
    logging.getLogger("dfs.test").warning("hello")
    logs.reset_op(token)
    logging.getLogger("dfs.test").warning("bye")
    first, second = out.getvalue().splitlines()
    assert "mgmt[0] WARNING dfs.test [op ab]: hello" in first
    assert second.endswith("mgmt[0] WARNING dfs.test: bye")


def test_an_unknown_format_is_refused(restore_logging):
    with pytest.raises(ValueError):
        logs.setup("x", fmt="xml")
