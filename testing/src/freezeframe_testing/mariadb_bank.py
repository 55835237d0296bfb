"""A live bank on a private MariaDB server: what the consistency tests back up under load.

Writer processes keep moving money between accounts (the total never
changes) and, in the same transaction, append the next number of their own
gapless sequence. A restored copy must hold the total, each sequence without
a gap, and everything committed before its backup began
(:func:`bank_problems`).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from freezeframe_testing.mariadb_server import MariaDB

__all__ = ["ACCOUNTS", "OPENING", "WRITERS", "bank_problems", "committed", "create_bank"]

ACCOUNTS = 20
OPENING = 1000
WRITERS = 2

WRITER = textwrap.dedent("""
    import random, sys
    import pymysql

    sock, writer, accounts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = pymysql.connect(unix_socket=sock, user="root", autocommit=False)
    cur = conn.cursor()
    rng = random.Random(writer)
    n = 0
    while True:
        a, b = sorted(rng.sample(range(1, accounts + 1), 2))  # one lock order: no deadlock
        amount = rng.randint(-50, 50)
        move = "UPDATE bank.accounts SET balance = balance + %s WHERE id = %s"
        try:
            cur.execute(move, (-amount, a))
            cur.execute(move, (amount, b))
            cur.execute("INSERT INTO bank.seq (writer, n) VALUES (%s, %s)", (writer, n))
            conn.commit()
        except pymysql.err.OperationalError as e:
            if e.args[0] not in (1205, 1213):  # lock wait timeout, deadlock: try again
                raise
            conn.rollback()
            continue
        n += 1
""")


def create_bank(server: MariaDB) -> None:
    """The database ``bank``: ``accounts`` (ACCOUNTS of OPENING each) and ``seq``."""
    server.sql(
        "CREATE DATABASE bank",
        "CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)",
        "CREATE TABLE bank.seq (writer INT, n INT, PRIMARY KEY (writer, n))",
        f"INSERT INTO bank.accounts SELECT seq, {OPENING} FROM bank.seq_1_to_{ACCOUNTS}",
    )


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Callable[[MariaDB], list[subprocess.Popen[bytes]]]]:
    """Start WRITERS writer processes on a server's bank; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(server: MariaDB) -> list[subprocess.Popen[bytes]]:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        for w in range(WRITERS):
            argv = [sys.executable, str(script), str(server.socket), str(w), str(ACCOUNTS)]
            procs.append(subprocess.Popen(argv))
        return procs

    yield start
    for p in procs:
        p.kill()
        p.wait(30)


def committed(server: MariaDB) -> dict[int, int]:
    """The highest sequence number each writer has committed."""
    rows = server.sql("SELECT writer, MAX(n) FROM bank.seq GROUP BY writer")
    return {int(w): int(n) for w, n in rows}


def bank_problems(copy: MariaDB, before: dict[int, int]) -> list[str]:
    """What is wrong with the bank of a restored ``copy``, whose backup began once each
    writer had committed ``before``."""
    out = []
    total = copy.sql("SELECT SUM(balance), COUNT(*) FROM bank.accounts")
    if total != [(OPENING * ACCOUNTS, ACCOUNTS)]:
        out.append(f"torn transfer: {total}")
    for w, n_min, n_max, count in copy.sql(
        "SELECT writer, MIN(n), MAX(n), COUNT(*) FROM bank.seq GROUP BY writer"
    ):
        if (n_min, count) != (0, n_max + 1):
            out.append(f"a gap in writer {w}")
        if n_max < before.get(int(w), -1):
            out.append(f"lost commits of writer {w}")
    return out
