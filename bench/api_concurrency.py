"""Wall time of an API VLM with `concurrency=4` against `concurrency=1`, on a loopback server that delays each
answer (bench/fake_openai_server.py), cache off (a fresh cache folder per run). Prints the ratio to the sequential
run measured in the same run; the ideal is 0.25.

    python bench/api_concurrency.py [--rows 16] [--delay 0.2] [--repeats 3]
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fake_openai_server import FakeOpenAIServer  # noqa: E402
from PIL import Image  # noqa: E402
from timing import median_time  # noqa: E402

from pisa_model.adapters.api import ApiVLM  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the server waits before each answer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    images = [Image.new("RGB", (640, 480), (i, 2 * i, 3 * i)) for i in range(args.rows)]
    prompts = [f"row {i}: give the bounding box" for i in range(args.rows)]
    with FakeOpenAIServer(delay=args.delay) as server, tempfile.TemporaryDirectory() as root:
        runs = iter(range(10**6))

        def ask(concurrency):
            vlm = ApiVLM("bench", server.base_url, concurrency=concurrency, cache_dir=f"{root}/{next(runs)}")
            answers = vlm.ask(images, prompts)
            vlm.close()
            assert all(answer.error is None for answer in answers)

        sequential = median_time(lambda: ask(1), args.repeats)
        concurrent = median_time(lambda: ask(4), args.repeats)
    print(f"{args.rows} rows, server delay {args.delay} s, median of {args.repeats}")
    print(f"concurrency=1: {sequential:.3f} s ({args.rows * args.delay:.3f} s of server delay)")
    print(f"concurrency=4: {concurrent:.3f} s")
    print(f"ratio concurrency=4 / concurrency=1: {concurrent / sequential:.3f} (ideal 0.25)")


if __name__ == "__main__":
    main()
