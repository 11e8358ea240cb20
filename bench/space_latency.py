"""Latency of the PISA demo Space on a tiny model, as ratios to floors measured in the same run (median of
--requests), plus the absolute medians (the issue asks for under a second per request on CPU).

    python bench/space_latency.py [--requests 20] [--size 320x240] [--threads 1]

  space     one /segment request through gradio_client to the staged app.py served on loopback (upload of the
            photo, queue, the checkpoint's pipeline, overlay, PNG encoding, download of the two result images)
            / floor: the same checkpoint's pipeline called in this process on the same photo and instruction
  startup   seconds from starting the server process to its first answer on /gradio_api/info (imports, model
            load, gradio startup), printed for reference
"""

import argparse
import os
import statistics
import tempfile
import time

from checkout import import_upload  # bench/checkout.py, beside this script

from instructpart_dataset.toolbox.fresh_process import serve_isolated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size", default="320x240", help="photo size WxH")
    parser.add_argument("--threads", type=int, default=1, help="torch threads here and in the server")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import torch
    from gradio_client import Client, handle_file
    from PIL import Image
    from transformers import pipeline

    from pisa_model.tiny import save_tiny_pisa

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench-space-")
    checkpoint = save_tiny_pisa(os.path.join(work, "checkpoint"))
    stage = os.path.join(work, "space")
    upload = import_upload()
    upload.stage_model_space(stage, "org/pisa-tiny")
    width, height = (int(v) for v in args.size.split("x"))
    photo = os.path.join(work, "photo.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(photo)
    instruction = "If I want to pour water, which part of the kettle should I use?"

    segmenter = pipeline(model=checkpoint, trust_remote_code=True)
    image = Image.open(photo).convert("RGB")
    segmenter(image, instruction=instruction)  # warm-up
    direct = []
    for _ in range(args.requests):
        start = time.perf_counter()
        segmenter(image, instruction=instruction)
        direct.append(time.perf_counter() - start)

    start = time.perf_counter()
    with serve_isolated(os.path.join(stage, "app.py"), env={"PISA_MODEL": checkpoint}) as app:
        startup = time.perf_counter() - start
        client = Client(app.url, verbose=False, download_files=os.path.join(work, "downloads"))
        client.predict(handle_file(photo), instruction, "teacher-forced", api_name="/segment")  # warm-up
        served = []
        for _ in range(args.requests):
            start = time.perf_counter()
            client.predict(handle_file(photo), instruction, "teacher-forced", api_name="/segment")
            served.append(time.perf_counter() - start)
    floor, space = statistics.median(direct), statistics.median(served)
    print(f"photo {width}x{height}, {args.requests} requests, {args.threads} thread(s)")
    print(f"floor  pipeline in process      median {floor * 1000:8.1f} ms")
    print(f"space  /segment via the client  median {space * 1000:8.1f} ms   {space / floor:6.1f}x floor")
    print(f"       slowest request                 {max(served) * 1000:8.1f} ms")
    print(f"startup to first answer                {startup:8.1f} s")


if __name__ == "__main__":
    main()
