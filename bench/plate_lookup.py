"""Owner lookup by plate with 1,000,000 registered vehicles on SQLite, beside baselines measured in the same run.

What the gate does for every read: ``uow.owners.by_plate(plate)`` on the real store (``storage_sqlite``): the
plate's HMAC-SHA256 blind index, one indexed query, then the owner row decrypted (AES-256-GCM: ID number, phone,
every plate). Timed over 10,000 random plates, p50/p99, beside:

* a bare ``SELECT 1`` and the bare indexed query (``SELECT owner_id FROM plates WHERE plate_bidx = ?``, index
  value precomputed) on a plain sqlite3 connection to the same file;
* a dict lookup (plate -> owner id) in memory;
* the parts: computing the blind index, and decrypting one field (the owner row needs three decryptions).

The database is built once into ``bench/.cache/plate_lookup-<n>/`` (with its own data key file, 0600) and reused:
1,000,000 owners through the service layer would take ~12 minutes (0.7 ms each), so they are written through the
store's own API -- ``uow.owners.add(owner)``, the same schema, encryption and blind indexes -- in batches of
20,000 per transaction. ``--rebuild`` builds it again.

    python bench/plate_lookup.py [--n 1000000] [--lookups 10000] [--rebuild]

Target: p50 < 0.2 ms for ``by_plate``. Prints PASS/FAIL; exits 0 unless ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smartpark.adapters.storage_sqlite.store import SqliteStore  # noqa: E402
from smartpark.core.entities import Owner  # noqa: E402
from smartpark.core.values import PersonName, Plate  # noqa: E402
from smartpark.security import KeyRing  # noqa: E402
from smartpark.testing.samples import sample_id_number, sample_phone, sample_plate  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
TARGET_P50_MS = 0.2
BATCH = 20_000
# 10 blocks of 100,000: an ID area, a phone prefix and a plate prefix per block keep every value distinct
AREAS = ("110105", "310115", "440305", "320102", "330106", "510104", "420102", "370102", "610113", "500103")
PHONES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150")
PLATES = ("京A", "沪B", "粤B", "苏E", "浙A", "川A", "鄂A", "鲁B", "豫A", "闽D")
CREATED = datetime(2024, 5, 1, tzinfo=UTC)


def plate_of(n: int) -> Plate:
    return sample_plate(n % 100_000, prefix=PLATES[n // 100_000])


def owner_of(n: int) -> Owner:
    block, m = divmod(n, 100_000)
    return Owner.register(name=PersonName(f"业主{n}号"), id_number=sample_id_number(m, area=AREAS[block]),
                          phone=sample_phone(m, prefix=PHONES[block]), plates=(plate_of(n),), created_at=CREATED)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def build(folder: Path, n: int) -> tuple[SqliteStore, KeyRing]:
    marker = folder / "complete.json"
    fresh = not marker.exists()
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark databases: built by bench/*.py, never committed\n*\n", encoding="utf-8")
    keyring = KeyRing.from_env_or_file(folder / "smartpark.key", env={})
    store = SqliteStore(folder / "smartpark.db", keyring)
    if not fresh:
        info = json.loads(marker.read_text(encoding="utf-8"))
        print(f"database: {folder} (cached: {info['owners']:,} owners, built in {info['seconds']:.0f} s)")
        return store, keyring
    store.migrate()
    print(f"building {n:,} owners into {folder} (store API, {BATCH:,} per transaction) ...", flush=True)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        owners = [owner_of(i) for i in range(start, min(n, start + BATCH))]
        with store.unit_of_work() as uow:
            for owner in owners:
                uow.owners.add(owner)
        done = start + len(owners)
        if done % 100_000 == 0 or done == n:
            rate = done / (time.perf_counter() - t0)
            print(f"  {done:>9,} owners  {rate:,.0f}/s", flush=True)
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"owners": n, "seconds": seconds}), encoding="utf-8")
    print(f"built in {seconds:.0f} s ({n / seconds:,.0f} owners/s)")
    return store, keyring


def timed(fn, items) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for item in items:
        t = clock()
        fn(item)
        out.append((clock() - t) / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="owners (one plate each), at most 1,000,000")
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 1_000_000:
        ap.error("--n must be 1..1,000,000")
    folder = CACHE / f"plate_lookup-{args.n}"
    if args.rebuild and folder.exists():
        shutil.rmtree(folder)
    store, keyring = build(folder, args.n)
    rng = random.Random(20240501)
    picks = [rng.randrange(args.n) for _ in range(args.lookups)]
    plates = [plate_of(i) for i in picks]
    texts = [str(p) for p in plates]

    # correctness first: the lookup finds the right owner
    with store.unit_of_work() as uow:
        for i in picks[:50]:
            owner = uow.owners.by_plate(plate_of(i))
            assert owner is not None and plate_of(i) in owner.plates, f"owner {i} not found by plate"
        assert uow.owners.by_plate(Plate("京Z99999")) is None
        count = uow.owners.count()

    # the measurement: by_plate inside open units of work (100 lookups each), then one unit of work per lookup
    by_plate: list[float] = []
    for k in range(0, len(plates), 100):
        with store.unit_of_work() as uow:
            by_plate += timed(uow.owners.by_plate, plates[k:k + 100])

    def one_uow(p: Plate) -> None:
        with store.unit_of_work() as uow:
            uow.owners.by_plate(p)
    with_uow = timed(one_uow, plates)

    # baselines on a plain connection to the same file
    raw = sqlite3.connect(folder / "smartpark.db")
    select1 = timed(lambda _: raw.execute("SELECT 1").fetchone(), plates)
    bidx = [keyring.blind_index("plate", t) for t in texts]
    indexed = timed(lambda b: raw.execute("SELECT owner_id FROM plates WHERE plate_bidx = ?", (b,)).fetchone(), bidx)
    found = sum(1 for b in bidx[:100] if raw.execute("SELECT 1 FROM plates WHERE plate_bidx = ?", (b,)).fetchone())
    assert found == 100, "the bare indexed query did not find the plates"
    row = raw.execute("SELECT id, id_number_enc FROM owners LIMIT 1").fetchone()
    raw.close()
    table = {t: i for i, t in enumerate(texts)}
    dict_lookup = timed(table.get, texts)
    blind = timed(lambda t: keyring.blind_index("plate", t), texts[:2000])
    decrypt = timed(lambda _: keyring.decrypt(row[1], f"owners.id_number_enc:{row[0]}"), range(2000))

    p50, p99 = pct(by_plate, 50), pct(by_plate, 99)
    print()
    print(f"{count:,} owners in the store; {len(plates):,} random lookups")
    print(f"{'':46} {'p50 (ms)':>10} {'p99 (ms)':>10} {'mean (ms)':>10}")
    rows = [
        ("uow.owners.by_plate (in an open unit of work)", by_plate),
        ("  + its own unit of work (BEGIN..COMMIT)", with_uow),
        ("baseline: bare indexed query (plain sqlite3)", indexed),
        ("baseline: SELECT 1 (plain sqlite3)", select1),
        ("baseline: dict lookup", dict_lookup),
        ("part: blind index (HMAC-SHA256)", blind),
        ("part: decrypt one field (AES-256-GCM)", decrypt),
    ]
    for name, values in rows:
        print(f"{name:46} {pct(values, 50):10.4f} {pct(values, 99):10.4f} {statistics.fmean(values):10.4f}")
    print()
    print(f"ratios (p50): by_plate / bare indexed query {p50 / pct(indexed, 50):.1f}x, "
          f"/ SELECT 1 {p50 / pct(select1, 50):.1f}x, / dict {p50 / pct(dict_lookup, 50):.0f}x")
    crypto = pct(blind, 50) + 3 * pct(decrypt, 50)
    print(f"crypto in one lookup: blind index + 3 decryptions (ID number, phone, plate) = {crypto:.4f} ms "
          f"= {crypto / p50 * 100:.0f}% of the p50")
    ok = p50 < TARGET_P50_MS
    print(f"{'PASS' if ok else 'FAIL'}  by_plate p50 < {TARGET_P50_MS} ms: {p50:.4f} ms (p99 {p99:.4f} ms)")
    store.close()
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
