"""`zscir serve` under a bounded load on 127.0.0.1: throughput, p50/p99, errors, HTTP overhead, an index update mid-run.

    python eval/bench_serve.py                       # 4 clients x 200 requests, 1000 world gallery images
    python eval/bench_serve.py --clients 2 --requests 50 --gallery 300 --json bench_serve.json
    python eval/bench_serve.py --heavy-uploads       # 3 clients upload 88 MP PNGs, a 4th searches (bench_serve_uploads.py)

What it does, in one run and one process tree on this machine:

1. copies ``--gallery`` images of the default shapes world's gallery to a temporary
   folder and indexes them (``zscir index``) with the shipped CLIP; queries are the world's
   test triplets whose reference is among them (reference by gallery id, every 4th by upload);
2. starts ``zscir serve`` on that index as a subprocess on 127.0.0.1 (a free port);
3. **direct** and **http, 1 client**: each query through ``Retriever.search`` in this process, then
   over HTTP, one after another and in turn (so both see the same background load) -> the HTTP
   overhead as the ratio of mean latencies (same torch thread count on both sides);
4. **load**: ``--clients`` concurrent clients x ``--requests`` requests each (bounded, stops by
   itself); ``--add`` more images are copied in and, as the load starts, ``zscir index`` is run on
   the served index (a real subprocess, the CLI users run), which the server picks up while
   answering. A client past its quota goes on only until the update is served, then
   ``--after-swap`` more (at most 4x the quota). Every request must answer 200, and every answer
   must equal ``Retriever.search`` on the index generation it names (old or new, never a mix);
   the final index must have the added images.

Only ever talks to 127.0.0.1. Numbers depend on the CPU (printed) and on what else runs on it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from zscir.utils.cpu import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def zscir_cmd() -> list[str]:
    return [sys.executable, "-c", "from zscir.cli import main; main()"]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--heavy-uploads" in argv:  # the upload scenario (issue 30): eval/bench_serve_uploads.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_serve_uploads import main as heavy_uploads
        return heavy_uploads([a for a in argv if a != "--heavy-uploads"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200, help="requests per client in the load phase")
    ap.add_argument("--gallery", type=int, default=1000, help="world gallery images to serve")
    ap.add_argument("--add", type=int, default=100, help="images added by the mid-run `zscir index` update")
    ap.add_argument("--sequential", type=int, default=100, help="queries in the direct and 1-client phases")
    ap.add_argument("--after-swap", type=int, default=20,
                    help="per client, at least this many requests after the update is served")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per search (server and direct alike)")
    ap.add_argument("--workers", type=int, default=2, help="the server's search workers")
    ap.add_argument("--json", dest="json_out", help="write the results here as JSON")
    args = ap.parse_args(argv)

    import httpx
    import torch

    from zscir.resolve import load_retriever
    from zscir.world.build import GALLERY_DIR, default_world
    from zscir.world.shipped import shapes_backbone, shipped_fti_checkpoint

    torch.set_num_threads(args.threads)
    world = default_world(progress=False)
    all_images = sorted((world / GALLERY_DIR).glob("*.png"))
    if len(all_images) < args.gallery + args.add:
        raise SystemExit(f"the world's gallery has {len(all_images)} images, fewer than --gallery + --add")
    chosen, extra = all_images[:args.gallery], all_images[args.gallery:args.gallery + args.add]
    names = {p.name for p in chosen}
    triplets = json.loads((world / "annotations" / "test.json").read_text())
    queries = [(f"{t['reference_img_id']:012d}.png", t["relative_caption"]) for t in triplets]
    queries = [q for q in queries if q[0] in names] or [(p.name, "make it red") for p in chosen[:50]]

    tmp = Path(tempfile.mkdtemp(prefix="zscir-bench-serve-"))
    server = None
    try:
        images, index = tmp / "images", tmp / "index"
        images.mkdir()
        for p in chosen:
            shutil.copy(p, images / p.name)
        t0 = time.perf_counter()
        subprocess.run([*zscir_cmd(), "index", "--images", str(images), "--out", str(index), "--no-progress"],
                       check=True, env=child_env(), capture_output=True)
        print(f"indexed {len(chosen)} images in {time.perf_counter() - t0:.1f} s; {len(queries)} distinct queries")

        backbone = shapes_backbone()
        model = str(shipped_fti_checkpoint(backbone.identity))
        server = subprocess.Popen([*zscir_cmd(), "serve", "--index", str(index), "--model", model, "--host",
                                   "127.0.0.1", "--port", "0", "--json", "--threads", str(args.threads),
                                   "--workers", str(args.workers), "--reload-interval", "0.5",
                                   "--log-level", "warning"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        line = server.stdout.readline()
        if not line:
            raise SystemExit("zscir serve did not start: " + server.stderr.read()[-2000:])
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:"), url

        seq = [queries[i % len(queries)] for i in range(args.sequential)]
        retriever = load_retriever(index, model, backbone=backbone)
        for ref, text in seq[:5]:  # warm-up
            retriever.search(images / ref, text, k=args.k)
        uploads = {ref: base64.b64encode((images / ref).read_bytes()).decode() for ref, _ in queries}

        def request(client, kind, ref, text):
            if kind == "upload":  # every 4th by upload (multipart), the rest by gallery id (JSON)
                return client.post("/search", files={"image": (ref, base64.b64decode(uploads[ref]), "image/png")},
                                   data={"text": text, "k": str(args.k)})
            return client.post("/search", json={"image_id": ref, "text": text, "k": args.k})

        # direct and over HTTP, query by query in turn: both see the same background load
        direct, one_client, in_server, same = [], [], [], 0
        with httpx.Client(base_url=url, timeout=60) as c:
            for ref, text in seq[:5]:
                c.post("/search", json={"image_id": ref, "text": text, "k": args.k})
            for ref, text in seq:
                t = time.perf_counter()
                hits = retriever.search(images / ref, text, k=args.k)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                res = c.post("/search", json={"image_id": ref, "text": text, "k": args.k})
                one_client.append(time.perf_counter() - t)
                res.raise_for_status()
                same += [r["id"] for r in res.json()["results"]] == [h.id for h in hits]
                in_server.append(res.json()["timings_ms"]["total"] / 1000)

        # the load phase, with `zscir index` updating the served index while it runs
        quota = args.clients * args.requests
        settled = threading.Event()  # the update is served (or failed): clients past their quota may stop
        done = [0]
        lock = threading.Lock()
        latencies: list[float] = []
        failures: list[str] = []
        answers: list[tuple[int, list[str]]] = []
        update = {}

        def client_loop(n):
            with httpx.Client(base_url=url, timeout=60) as c:
                i = after = 0
                # the quota; past it, on until the update is served and --after-swap more were answered
                # (bounded: at most 4x the quota)
                while i < 4 * args.requests:
                    if settled.is_set():
                        if i >= args.requests and after >= args.after_swap:
                            break
                        after += 1
                    ref, text = queries[(n * 7919 + i) % len(queries)]
                    kind = "upload" if i % 4 == 3 else "id"
                    i += 1
                    t = time.perf_counter()
                    try:
                        res = request(c, kind, ref, text)
                        ok = res.status_code == 200
                        body = res.json() if ok else None
                        why = None if ok else f"{res.status_code} {res.text[:200]}"
                    except Exception as e:  # noqa: BLE001 - a lost request is what we count
                        ok, body, why = False, None, repr(e)
                    elapsed = time.perf_counter() - t
                    with lock:
                        latencies.append(elapsed)
                        done[0] += 1
                        if ok:
                            answers.append((body["index_generation"], kind, ref, text,
                                            [r["id"] for r in body["results"]]))
                        else:
                            failures.append(why)

        for p in extra:  # the new images arrive; `zscir index` starts with the load and lands during it
            shutil.copy(p, images / p.name)

        def updater():
            t = time.perf_counter()
            update["started_at_request"] = done[0]
            proc = subprocess.run([*zscir_cmd(), "index", "--images", str(images), "--out", str(index),
                                   "--no-progress", "--json"], env=child_env(), capture_output=True, text=True)
            update.update(returncode=proc.returncode, seconds=time.perf_counter() - t, finished_at_request=done[0],
                          stderr=proc.stderr[-500:])
            try:
                deadline = time.monotonic() + 30
                while proc.returncode == 0 and time.monotonic() < deadline:
                    h = httpx.get(url + "/healthz", timeout=30).json()
                    if h["index"]["images"] == len(chosen) + len(extra):
                        update["swapped_at_request"] = done[0]
                        update["swapped_after_s"] = time.perf_counter() - t
                        break
                    time.sleep(0.05)
            finally:
                settled.set()

        with httpx.Client(base_url=url, timeout=60) as c:
            gen0 = c.get("/healthz").json()["index"]["generation"]
        threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(args.clients)]
        up = threading.Thread(target=updater)
        t_load = time.perf_counter()
        up.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_load
        up.join()
        with httpx.Client(base_url=url, timeout=60) as c:
            health = c.get("/healthz").json()
            metrics = c.get("/metrics").text

        # every answer must be the whole old index's or the whole new index's: compare with Retriever.search on each
        total = len(latencies)
        added = {p.name for p in extra}
        gens = sorted({a[0] for a in answers})
        stale_mixed = sum(1 for g, _, _, _, ids in answers if g == gen0 and set(ids) & added)
        by_gen = {gen0: retriever, gen0 + 1: load_retriever(index, model, backbone=backbone)}
        expected: dict[tuple, list[str]] = {}
        mismatched = 0
        for g, kind, ref, text, ids in answers:
            key = (g, kind, ref, text)
            if key not in expected:
                r = by_gen.get(g)
                # an upload of a gallery file's bytes is left out of its answer as the file itself is
                expected[key] = [h.id for h in r.search(images / ref, text, k=args.k)] if r else []
            mismatched += ids != expected[key]
        result = {
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "torch_threads": args.threads, "server_workers": args.workers,
            "gallery": len(chosen), "added": len(extra), "k": args.k, "clients": args.clients,
            "requests": total, "quota": quota,
            "direct": {"n": len(direct), "mean_ms": 1000 * statistics.mean(direct), "p50_ms": 1000 * pct(direct, 50),
                       "p99_ms": 1000 * pct(direct, 99)},
            "http_1_client": {"n": len(one_client), "mean_ms": 1000 * statistics.mean(one_client),
                              "p50_ms": 1000 * pct(one_client, 50), "p99_ms": 1000 * pct(one_client, 99),
                              "same_ranking_as_direct": same,
                              "search_in_server_mean_ms": 1000 * statistics.mean(in_server)},
            "http_overhead_ratio": statistics.mean(one_client) / statistics.mean(direct),
            "load": {"answered": len(answers), "errors": len(failures), "first_errors": failures[:3],
                     "wall_s": wall, "throughput_rps": total / wall, "p50_ms": 1000 * pct(latencies, 50),
                     "p99_ms": 1000 * pct(latencies, 99), "generations_seen": gens,
                     "answers_from_old_index_naming_new_images": stale_mixed,
                     "answers_unlike_retriever_on_their_generation": mismatched},
            "direct_rps_one_thread": 1 / statistics.mean(direct),
            "index_update": {**update, "final_images": health["index"]["images"],
                             "final_generation": health["index"]["generation"]},
        }
        result["ok"] = (not failures and len(answers) == total and update.get("returncode") == 0
                        and health["index"]["images"] == len(chosen) + len(extra) and stale_mixed == 0
                        and len(gens) == 2 and same == len(seq) and update.get("swapped_at_request", total) < total
                        and mismatched == 0)
        result["metrics_sample"] = [ln for ln in metrics.splitlines()
                                    if ln.startswith("zscir_stage_seconds_sum") or ln.startswith("zscir_index_")]
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    d, h, load = result["direct"], result["http_1_client"], result["load"]
    print(f"CPU: {result['cpu']} ({result['cores']} cores visible, load average {result['load_average_1min']:.1f} "
          f"at the end), torch threads {args.threads}, "
          f"server workers {args.workers}, gallery {result['gallery']} (+{result['added']} mid-run), k={args.k}")
    print(f"{'':24}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'Retriever.search':24}{d['mean_ms']:9.2f}{d['p50_ms']:9.2f}{d['p99_ms']:9.2f}")
    print(f"{'HTTP, 1 client':24}{h['mean_ms']:9.2f}{h['p50_ms']:9.2f}{h['p99_ms']:9.2f}"
          f"   same ranking {h['same_ranking_as_direct']}/{h['n']}")
    print(f"HTTP overhead: {result['http_overhead_ratio']:.2f}x Retriever.search (mean latency, same queries); "
          f"the search itself took {h['search_in_server_mean_ms']:.2f} ms of it in the server")
    print(f"load: {args.clients} clients x {args.requests} (+{total - quota} to see the swap) = {total} requests "
          f"in {load['wall_s']:.1f} s: "
          f"{load['throughput_rps']:.1f} req/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
          f"{load['errors']} errors; direct one-thread rate {result['direct_rps_one_thread']:.1f} q/s")
    u = result["index_update"]
    print(f"index update mid-run: `zscir index` exit {u.get('returncode')} in {u.get('seconds', 0):.1f} s, started at "
          f"request {u.get('started_at_request')}, served from request {u.get('swapped_at_request')}; generations seen "
          f"{load['generations_seen']}; final {u['final_images']} images; answers unlike Retriever.search on their own "
          f"generation: {load['answers_unlike_retriever_on_their_generation']}; old-index answers naming new images: "
          f"{load['answers_from_old_index_naming_new_images']}")
    if u.get("swapped_at_request", total) >= total:
        print("the index update landed after the load had ended: raise --requests so that they overlap")
    print("OK" if result["ok"] else "FAILED")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if not result["ok"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
