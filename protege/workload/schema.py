"""The small SQLite database the workload's SQL tasks run against (shipped, generated, seeded)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

SCHEMA_SQL = """CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
  status TEXT NOT NULL, total REAL NOT NULL, placed_at TEXT NOT NULL);
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id),
  product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL);"""


def build_database(path: Path | str = ":memory:", seed: int = 7) -> sqlite3.Connection:
    """The shop database with a few hundred seeded rows, so queries have answers to compare."""
    from protege.workload.agent import CITIES, NAMES, PRODUCTS, STATUSES

    rng = random.Random(seed)
    db = sqlite3.connect(str(path))
    db.executescript(SCHEMA_SQL)
    db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?)",
        [(i, rng.choice(NAMES), rng.choice(CITIES)) for i in range(1, 61)],
    )
    db.executemany(
        "INSERT INTO products VALUES (?, ?, ?)",
        [(i, p, round(rng.uniform(4, 80), 2)) for i, p in enumerate(PRODUCTS, 1)],
    )
    for order in range(1, 301):
        items = [(order, rng.randint(1, len(PRODUCTS)), rng.randint(1, 4)) for _ in range(rng.randint(1, 3))]
        total = sum(
            q * db.execute("SELECT price FROM products WHERE id = ?", (p,)).fetchone()[0] for _, p, q in items
        )
        day = f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        db.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            (order, rng.randint(1, 60), rng.choice(STATUSES), round(total, 2), day),
        )
        db.executemany("INSERT INTO order_items VALUES (?, ?, ?)", items)
    db.commit()
    return db
