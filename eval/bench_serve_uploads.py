"""`zscir serve` while clients upload huge images: does a fourth client's search by gallery id stay fast?

    python eval/bench_serve.py --heavy-uploads                   # 3 uploaders of an 88 MP PNG, 1 searcher
    python eval/bench_serve_uploads.py --uploaders 3 --uploads 4 --json out.json

Starts ``zscir serve`` (the shapes world's gallery, the shipped model) on 127.0.0.1, measures the
searcher's median latency alone (quiet), then while ``--uploaders`` clients each upload an
``--megapixels`` PNG (a few hundred KB, decoded in full: PNG has no draft mode) ``--uploads`` times,
and the server's RSS (``/proc/PID/status``) at the start, at its peak and after the load. Reports
ratios measured within this one run (the machine may be shared: compare ratios, not milliseconds).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_png(megapixels: float) -> bytes:
    import numpy as np
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # repeated: compresses to a few hundred KB
    image = Image.fromarray(np.tile(tile, (side // 64 + 1, side // 64 + 1, 1))[:side, :side])
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def main(argv=None) -> dict:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--uploaders", type=int, default=3)
    ap.add_argument("--uploads", type=int, default=4, help="uploads per uploader")
    ap.add_argument("--megapixels", type=float, default=88.0)
    ap.add_argument("--quiet", type=int, default=60, help="searches in the quiet phase")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)

    png = big_png(args.megapixels)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    server = subprocess.Popen([sys.executable, "-c", "from zscir.cli import main; main()", "serve", "--port", "0",
                               "--json", "--workers", str(args.workers), "--rate-limit", "0", "--max-upload-mb", "64",
                               "--log-level", "warning", "--no-progress", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        if not line:
            raise SystemExit("zscir serve did not start: " + server.stderr.read()[-2000:])
        url = json.loads(line)["url"]
        with httpx.Client(base_url=url, timeout=600) as c:
            ids = c.get("/gallery", params={"limit": 50}).json()["ids"]

            def search(i: int) -> float:
                t0 = time.perf_counter()
                res = c.post("/search", json={"image_id": ids[i % len(ids)], "text": "make it red", "k": 10})
                assert res.status_code == 200, res.text
                return time.perf_counter() - t0

            for i in range(10):
                search(i)  # warm-up
            start_rss = rss_mb(server.pid)
            quiet = [search(i) for i in range(args.quiet)]
            statuses, done = [], threading.Event()

            def uploader() -> None:
                with httpx.Client(base_url=url, timeout=600) as u:
                    for _ in range(args.uploads):
                        res = u.post("/search", files={"image": ("big.png", png)}, data={"text": "make it red"})
                        statuses.append(res.status_code)

            threads = [threading.Thread(target=uploader) for _ in range(args.uploaders)]
            for t in threads:
                t.start()
            loaded, peak, i = [], start_rss, 0
            while any(t.is_alive() for t in threads):
                loaded.append(search(i))
                peak, i = max(peak, rss_mb(server.pid)), i + 1
            for t in threads:
                t.join()
            time.sleep(2)
            after = [search(i) for i in range(10)]
            end_rss = rss_mb(server.pid)
        result = {"cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                               if ln.startswith("model name")), "?"),
                  "png_bytes": len(png), "megapixels": args.megapixels, "upload_statuses": statuses,
                  "quiet_median_ms": statistics.median(quiet) * 1000,
                  "loaded_median_ms": statistics.median(loaded) * 1000, "loaded_searches": len(loaded),
                  "loaded_p90_ms": sorted(loaded)[int(0.9 * (len(loaded) - 1))] * 1000,
                  "after_median_ms": statistics.median(after) * 1000,
                  "rss_start_mb": start_rss, "rss_peak_mb": peak, "rss_end_mb": end_rss}
        result["latency_ratio"] = result["loaded_median_ms"] / result["quiet_median_ms"]
        result["rss_end_over_start"] = end_rss / start_rss
        print(json.dumps(result, indent=1))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=1))
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
