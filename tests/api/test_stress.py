"""Stress: several processes read and write one store at once, on SpatiaLite and on PostGIS.

For about 20 s per backend (``MUSECL_STRESS_SECONDS``), with bounded counts, five OS processes
share one store and one ``MUSECL_INDEX_DIR``:

- ``reader-fresh``: a new :class:`~musecl_store.api.Store` per round (like a CLI run): a search
  by region, a search by point and a features lookup;
- ``reader-long``: the same with one long-lived Store (like ``musecl serve``);
- ``cli-reader``: ``musecl export --format csv``, ``musecl similar`` by region and by point and
  ``musecl features``, each a process of its own;
- ``writer-api``: one long-lived Store that checks the store (``status()``), then ingests the
  original bundle and the edited one in turn, and re-embeds after each;
- ``cli-writer``: ``musecl index build``, ``musecl models activate`` (the active version),
  ``musecl reembed`` and ``musecl ingest`` (edited and original in turn).

Before the run the edited regions' vectors are known both ways, so the store can only ever
be in one of two states: "original" or "edited" (every edited region at once). Each answer
must be complete (k hits, every region in an export, no NaN) and match one of the two states
for every region it returns: a torn answer, mixing two commits, matches neither.

Afterwards: every process exited 0 and no stderr shows a traceback, "database is locked", a
missing file or a missing index folder; one embedding per (region, model version, kind); the
index on disk opens current; no temporary index folder is left behind; ``musecl db check``
reports ok (when the command exists); and a last re-embed brings the vectors to the state of
the bundle ingested last.

``MUSECL_RELIABILITY_OUT=FILE`` adds ``{backend: {processes, operations, errors, ...}}`` to the
JSON object in FILE (the README's reliability table quotes it).

The driver processes run this file: ``python -m tests.api.test_stress ROLE SPEC_JSON``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CITY = "demo-3"
K = 5
DURATION = float(os.environ.get("MUSECL_STRESS_SECONDS", "20"))
TOL = 2e-4  # cosine scores: float32 FAISS vs float64 here, and 6 decimals in JSON
FORBIDDEN = {
    "a Python traceback": re.compile(r"Traceback \(most recent call last\)"),
    "'database is locked'": re.compile(r"database is locked", re.IGNORECASE),
    "a missing file": re.compile(r"No such file", re.IGNORECASE),
    "a missing index folder": re.compile(
        r"\bindex\b[^\n]*\b(missing|not found|does not exist|no such)", re.IGNORECASE
    ),
}
LOCK_WAIT = "another process is writing"
ROLES = {
    "reader-fresh": ("search_region", "search_point", "features"),
    "reader-long": ("search_region", "search_point", "features"),
    "cli-reader": ("export", "search_region", "search_point", "features"),
    "writer-api": ("ingest", "reembed"),
    "cli-writer": ("index_build", "models_activate", "reembed", "ingest"),
}
MAX_ROUNDS = {"reader-fresh": 400, "reader-long": 400, "cli-reader": 60}  # writers: 40


# ---------------------------------------------------------------------------- the driver


class Driver:
    """One stress process: runs its role's operations in rounds until the deadline."""

    def __init__(self, name: str, spec: dict[str, Any]):
        self.name, self.spec = name, spec
        self.url, self.index_dir = spec["url"], spec["index_dir"]
        data = np.load(spec["states"])
        self.ids = [str(r) for r in data["ids"]]
        self.row = {r: i for i, r in enumerate(self.ids)}
        self.states = {"original": data["original"], "edited": data["edited"]}
        self.unit = {
            k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in self.states.items()
        }
        self.lonlat = data["lonlat"]
        self.edited: list[str] = spec["edited"]
        self.rng = random.Random(zlib.crc32(name.encode()))
        self.work = Path(spec["work"]) / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # time spent per kind of operation
        self.seen: Counter[str] = Counter()  # which state the answers came from
        self.cli_runs = 0
        self.deadline = 0.0

    # ------------------------------------------------------------------ plumbing

    def wait_for_go(self) -> None:
        (self.work / "ready").touch()
        go = Path(self.spec["work"]) / "go.json"
        limit = time.time() + 600
        while not go.exists():
            if time.time() > limit:
                raise SystemExit(f"{self.name}: no go signal")
            time.sleep(0.05)
        self.deadline = json.loads(go.read_text())["deadline"]

    def rounds(self, most: int, *, until_writers_done: bool = False) -> Iterator[int]:
        """Rounds until the deadline (at least one, at most ``most``); readers go on while a
        writer still runs (up to 3 minutes more), so that they see its last commits."""
        done = Path(self.spec["work"]) / "writers-done"
        n = 0
        while n == 0 or (
            n < most
            and (
                time.time() < self.deadline
                or (until_writers_done and not done.exists() and time.time() < self.deadline + 180)
            )
        ):
            yield n
            n += 1

    def late(self, n: int) -> bool:
        """A writer past the deadline skips the rest of its round (after its first round)."""
        return n > 0 and time.time() >= self.deadline

    def op(self, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        started = time.perf_counter()
        try:
            fn(*args)
        except Exception:
            self.errors[kind] += 1
            print(f"[{self.name}] {kind} failed:", file=sys.stderr, flush=True)
            traceback.print_exc()
        else:
            self.ops[kind] += 1
        self.seconds[kind] += time.perf_counter() - started

    def cli(self, *args: str) -> str:
        env = {**os.environ, "MUSECL_INDEX_DIR": self.index_dir, "MUSECL_PROGRESS": "0"}
        cmd = [sys.executable, "-m", "musecl_store.cli", "--db", self.url, *args]
        self.cli_runs += 1
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        for line in r.stderr.splitlines():  # the test scans every stderr
            print(f"[{self.name}: musecl {args[0]}] {line}", file=sys.stderr, flush=True)
        if r.returncode != 0:
            raise RuntimeError(f"`musecl {' '.join(args)}` exited {r.returncode}")
        return r.stdout

    # ------------------------------------------------------------------ checks

    def check_hits(self, query: str, hits: list[tuple[str, float]], what: str) -> None:
        """k distinct hits, best first, equal to brute force over one committed state."""
        assert len(hits) == K, f"{what}: {len(hits)} hits, not {K}: {hits}"
        ids = [h[0] for h in hits]
        scores = np.array([h[1] for h in hits], dtype=np.float64)
        assert len(set(ids)) == K and query not in ids, f"{what}: bad hit list {ids}"
        assert all(r in self.row for r in ids), f"{what}: unknown regions among {ids}"
        assert np.isfinite(scores).all(), f"{what}: scores {scores}"
        assert (np.diff(scores) <= TOL).all(), f"{what}: not best first: {scores}"
        for state, unit in self.unit.items():
            cos = unit @ unit[self.row[query]]
            cos[self.row[query]] = -np.inf
            best = np.sort(cos)[::-1][:K]
            got = cos[[self.row[r] for r in ids]]
            if np.allclose(got, scores, atol=TOL) and np.allclose(scores, best, atol=TOL):
                self.seen[state] += 1
                return
        raise AssertionError(
            f"{what}: the hits {list(zip(ids, scores.round(5).tolist(), strict=True))} match "
            "neither committed state (a torn or stale answer)"
        )

    def check_vectors(self, ids: list[str], mat: np.ndarray, wanted: list[str], what: str) -> None:
        """Exactly the wanted regions, finite, all of them from one committed state."""
        assert sorted(ids) == sorted(wanted), f"{what}: regions {sorted(set(ids) ^ set(wanted))}"
        assert len(ids) == len(set(ids)), f"{what}: a region twice"
        dim = self.states["original"].shape[1]
        assert mat.shape == (len(wanted), dim), f"{what}: shape {mat.shape}"
        assert np.isfinite(mat).all(), f"{what}: NaN or inf values"
        rows = [self.row[r] for r in ids]
        for state, ref in self.states.items():
            if np.allclose(mat, ref[rows], rtol=1e-4, atol=1e-5):
                self.seen[state] += 1
                return
        raise AssertionError(f"{what}: the vectors match neither committed state (torn)")

    def check_csv(self, text: str, wanted: list[str], what: str) -> None:
        rows = list(csv.reader(io.StringIO(text)))
        assert rows and rows[0][0] == "region_id", f"{what}: header {rows[:1]}"
        body = [r for r in rows[1:] if r]
        assert all(len(r) == len(rows[0]) for r in body), f"{what}: ragged rows"
        try:
            mat = np.array([[float(x) for x in r[1:]] for r in body], dtype=np.float64)
        except ValueError as exc:
            raise AssertionError(f"{what}: an empty or bad value ({exc})") from exc
        self.check_vectors([r[0] for r in body], mat, wanted, what)

    # ------------------------------------------------------------------ roles

    def reader(self, long_lived: bool) -> None:
        import musecl_store

        long = musecl_store.open(self.url, index_dir=self.index_dir) if long_lived else None
        for _ in self.rounds(MAX_ROUNDS[self.name], until_writers_done=True):
            store = long or musecl_store.open(self.url, index_dir=self.index_dir)
            try:
                rid = self.rng.choice(self.ids)
                self.op("search_region", self._search, store, rid, None)
                pid = self.rng.choice(self.ids)
                lon, lat = (float(x) for x in self.lonlat[self.row[pid]])
                self.op("search_point", self._search, store, pid, (lon, lat))
                self.op("features", self._features, store, self._subset())
            finally:
                if store is not long:
                    store.close()
        if long is not None:
            long.close()

    def _subset(self) -> list[str]:
        rest = [r for r in self.ids if r not in self.edited]
        return sorted({*self.edited, *self.rng.sample(rest, 6)})

    def _search(self, store: Any, rid: str, point: tuple[float, float] | None) -> None:
        if point is None:
            hits = store.search(CITY, rid, k=K)
        else:
            hits = store.search(CITY, point=point, k=K)
        what = f"search from {rid}" if point is None else f"search from {point} (in {rid})"
        self.check_hits(rid, [(h.region_id, h.score) for h in hits], what)

    def _features(self, store: Any, wanted: list[str]) -> None:
        frame = store.features(CITY, wanted)
        cols = [c for c in frame.columns if re.fullmatch(r"e\d+", str(c))]
        ids = [str(r) for r in frame["region_id"]]
        self.check_vectors(ids, frame[cols].to_numpy(np.float64), wanted, "features")

    def cli_reader(self) -> None:
        for n in self.rounds(MAX_ROUNDS[self.name], until_writers_done=True):
            self.op("export", self._cli_export, n)
            rid = self.rng.choice(self.ids)
            self.op("search_region", self._cli_similar, rid, [rid])
            pid = self.rng.choice(self.ids)
            lon, lat = self.lonlat[self.row[pid]]
            self.op("search_point", self._cli_similar, pid, ["--point", f"{lon:.7f},{lat:.7f}"])
            self.op("features", self._cli_features, self._subset())

    def _cli_export(self, n: int) -> None:
        out = self.work / f"export-{n}.csv"
        self.cli("export", "--city", CITY, "--format", "csv", "--out", str(out))
        self.check_csv(out.read_text(encoding="utf-8"), self.ids, "export")
        out.unlink()

    def _cli_similar(self, rid: str, query: list[str]) -> None:
        hits = json.loads(self.cli("similar", "--city", CITY, *query, "-k", str(K), "--json"))
        what = f"`musecl similar {' '.join(query)}`"
        self.check_hits(rid, [(h["region_id"], float(h["score"])) for h in hits], what)

    def _cli_features(self, wanted: list[str]) -> None:
        text = self.cli("features", "--city", CITY, "--regions", ",".join(wanted))
        self.check_csv(text, wanted, "`musecl features`")

    def writer_api(self) -> None:
        import musecl_store

        bundles = [self.spec["original_bundle"], self.spec["edited_bundle"]]
        with musecl_store.open(self.url, index_dir=self.index_dir) as store:
            # a long-lived writer checks the store before its first write, as a service would
            assert store.status()["up_to_date"]
            for n in self.rounds(40):
                self.op("ingest", store.ingest, bundles[n % 2])
                if not self.late(n):
                    self.op("reembed", store.reembed, CITY)

    def cli_writer(self) -> None:
        bundles = [self.spec["edited_bundle"], self.spec["original_bundle"]]
        mv = str(self.spec["model_version"])
        steps = [
            ("index_build", ("index", "build", "--city", CITY, "--json")),
            ("models_activate", ("models", "activate", mv, "--json")),
            ("reembed", ("reembed", "--city", CITY, "--json")),
        ]
        for n in self.rounds(40):
            for kind, args in [*steps, ("ingest", ("ingest", bundles[n % 2], "--json"))]:
                if self.late(n):
                    break
                self.op(kind, self.cli, *args)

    def run(self) -> int:
        role: dict[str, Callable[[], None]] = {
            "reader-fresh": lambda: self.reader(long_lived=False),
            "reader-long": lambda: self.reader(long_lived=True),
            "cli-reader": self.cli_reader,
            "writer-api": self.writer_api,
            "cli-writer": self.cli_writer,
        }
        import musecl_store.api  # noqa: F401  (imports before the clock starts)

        self.wait_for_go()
        started = time.time()
        try:
            role[self.name]()
        except Exception:
            self.errors["driver"] += 1
            traceback.print_exc()
        result = {
            "name": self.name,
            "operations": dict(self.ops),
            "errors": dict(self.errors),
            "seconds_per_kind": {k: round(v, 2) for k, v in self.seconds.items()},
            "states_seen": dict(self.seen),
            "cli_commands": self.cli_runs,
            "seconds": round(time.time() - started, 1),
        }
        (self.work / "result.json").write_text(json.dumps(result))
        return 1 if self.errors else 0


# ---------------------------------------------------------------------------- the test


def _fused(store: Any, mv: int) -> tuple[list[str], np.ndarray]:
    from musecl_store.store.vectors import load_embeddings

    with store.session() as s:
        ids, mat = load_embeddings(s, mv, "fused")
    return list(ids), np.asarray(mat, dtype=np.float64)


def _rows_per_region(store: Any, mv: int) -> dict[tuple[int, str], int]:
    from sqlalchemy import func, select

    from musecl_store.store.tables import Embedding

    with store.session() as s:
        return {
            (pk, kind): n
            for pk, kind, n in s.execute(
                select(Embedding.region_pk, Embedding.kind, func.count())
                .where(Embedding.model_version_id == mv)
                .group_by(Embedding.region_pk, Embedding.kind)
            ).all()
        }


def _cli(url: str, index_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUSECL_INDEX_DIR": str(index_dir), "MUSECL_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "musecl_store.cli", "--db", url, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def _report_ok(report: Any) -> bool:
    """`musecl db check --json` says all invariants hold (tolerant of the report's shape)."""
    if isinstance(report, dict):
        if "ok" in report:
            return report["ok"] is True
        if "status" in report:
            return str(report["status"]).lower() == "ok"
        for key in ("problems", "violations", "errors", "failures"):
            if key in report:
                return not report[key]
    return False


def _record(backend: str, summary: dict[str, Any]) -> None:
    out = os.environ.get("MUSECL_RELIABILITY_OUT")
    if not out:
        return
    path = Path(out)
    data = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
    data[backend] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_readers_and_writers_at_once(backend, trained: str, demo_bundle: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    import musecl_store
    from tests.embedding.test_reembed import edit_bundle

    url = backend.clone(trained)
    index_dir = tmp_path / "idx"
    edited_bundle = tmp_path / "edited"
    edited = sorted(edit_bundle(demo_bundle, edited_bundle))

    # The two states the edited regions' vectors can be in: as trained (a re-embed of the
    # original bundle gives the same vectors), and re-embedded after the edit.
    with musecl_store.open(url, index_dir=index_dir) as store:
        mv = store.active_model_version(CITY)
        ids, original_state = _fused(store, mv)
        store.ingest(edited_bundle)
        store.reembed(CITY)
        ids_again, edited_state = _fused(store, mv)
        assert ids == ids_again
        regions = store.regions(CITY).set_index("region_id")
        store.build_index(CITY)
        rows_before = _rows_per_region(store, mv)
    moved = {
        r
        for r, a, b in zip(ids, original_state, edited_state, strict=True)
        if not np.allclose(a, b, rtol=1e-4, atol=1e-5)
    }
    assert moved and moved <= set(edited), (moved, edited)  # the two states differ, only there
    assert set(rows_before.values()) == {1}
    work = tmp_path / "work"
    work.mkdir()
    np.savez(
        work / "states.npz",
        ids=np.array(ids),
        original=original_state,
        edited=edited_state,
        lonlat=regions.loc[ids, ["lon", "lat"]].to_numpy(np.float64),
    )
    spec = {
        "url": url,
        "index_dir": str(index_dir),
        "states": str(work / "states.npz"),
        "edited": edited,
        "work": str(work),
        "model_version": mv,
        "original_bundle": str(demo_bundle),
        "edited_bundle": str(edited_bundle),
    }
    (work / "spec.json").write_text(json.dumps(spec))

    env = {**os.environ, "MUSECL_INDEX_DIR": str(index_dir), "MUSECL_PROGRESS": "0"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        for name in ROLES:
            logs[name] = work / f"{name}.stderr"
            with logs[name].open("wb") as err:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "tests.api.test_stress", name, str(work / "spec.json")],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        limit = time.time() + 300
        while not all((work / name / "ready").exists() for name in ROLES):
            for name, p in procs.items():
                assert p.poll() is None, f"{name} exited early:\n{logs[name].read_text()[-3000:]}"
            assert time.time() < limit, "the stress processes did not start"
            time.sleep(0.1)
        started = time.time()
        (work / "go.tmp").write_text(json.dumps({"deadline": started + DURATION}))
        (work / "go.tmp").rename(work / "go.json")
        writers = [n for n in ROLES if "writer" in n]
        for name in [*writers, *(n for n in ROLES if n not in writers)]:
            try:
                procs[name].wait(timeout=max(1.0, started + DURATION + 420 - time.time()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish:\n{logs[name].read_text()[-3000:]}")
            if name == writers[-1]:
                (work / "writers-done").touch()  # the readers stop after their round
        wall = time.time() - started
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    results = {}
    for name in ROLES:
        f = work / name / "result.json"
        results[name] = json.loads(f.read_text()) if f.exists() else {"errors": {"no result": 1}}
    stderr = {name: logs[name].read_text(errors="replace") for name in ROLES}
    operations: Counter[str] = Counter()
    for r in results.values():
        operations.update(r.get("operations", {}))
    summary = {
        "processes": len(ROLES),
        "cli_commands": sum(r.get("cli_commands", 0) for r in results.values()),
        "seconds": round(wall, 1),
        "operations": dict(sorted(operations.items())),
        "errors": sum(sum(r.get("errors", {}).values()) for r in results.values()),
        "lock_waits": sum(text.count(LOCK_WAIT) for text in stderr.values()),
        "per_process": results,
    }
    _record(backend.name, summary)

    problems = []
    for name, p in procs.items():
        if p.returncode != 0:
            problems.append(f"{name} exited {p.returncode}")
        for what, pattern in FORBIDDEN.items():
            if pattern.search(stderr[name]):
                problems.append(f"{name}'s stderr shows {what}")
        if results[name].get("errors"):
            problems.append(f"{name}: errors {results[name]['errors']}")
        missing = [k for k in ROLES[name] if not results[name].get("operations", {}).get(k)]
        if missing:
            problems.append(f"{name} never completed {missing}")
    details = "\n".join(f"--- {n} (last 4000 characters)\n{stderr[n][-4000:]}" for n in ROLES)
    assert not problems, "\n".join(problems) + "\n" + details

    # ---- the store's invariants afterwards
    from musecl_store.search.index import RegionIndex

    with musecl_store.open(url, index_dir=index_dir) as store:
        assert _rows_per_region(store, mv) == rows_before  # one per (region, version, kind)
        with store.session() as s:
            assert RegionIndex.open(s, index_dir, mv).is_current(s)
    leftovers = [p.name for p in index_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers, f"temporary index folders left behind: {leftovers}"

    if _cli(url, index_dir, "db", "check", "--help").returncode == 0:
        check = _cli(url, index_dir, "db", "check", "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        assert _report_ok(json.loads(check.stdout)), check.stdout

    # the vectors follow the bundle ingested last, once re-embedded
    with musecl_store.open(url, index_dir=index_dir) as store:
        source = Path(store.cities().set_index("city").loc[CITY, "source"]).resolve()
        assert source in (demo_bundle.resolve(), edited_bundle.resolve())
        store.reembed(CITY)
        now_ids, now = _fused(store, mv)
        want = original_state if source == demo_bundle.resolve() else edited_state
        assert now_ids == ids and np.allclose(now, want, rtol=1e-4, atol=1e-5)
        with store.session() as s:
            assert RegionIndex.open(s, index_dir, mv).is_current(s)
        assert _rows_per_region(store, mv) == rows_before


if __name__ == "__main__":
    sys.exit(Driver(sys.argv[1], json.loads(Path(sys.argv[2]).read_text())).run())
