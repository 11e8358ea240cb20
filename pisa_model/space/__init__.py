"""The PISA demo Space (`app.py`, staged by upload.py with generated examples) and its local launcher:

python -m pisa_model.space --model out/demo/model [--port 7860]
"""

import json
import os

import numpy as np

APP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
# (object, size) of the generated example photos: the release's photos are not ours to redistribute.
EXAMPLE_OBJECTS = (("kettle", (320, 240)), ("sofa", (360, 240)), ("trash can", (240, 300)))


def write_examples(folder: str, seed: int = 0) -> list:
    """Render generated example photos into `folder` with one TRPS and one ORPS instruction each and write the
    `examples.json` that app.py reads; returns its entries."""
    from instructpart_dataset.synthetic import CATALOG, instructions_for, render_object

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    entries = []
    for name, size in EXAMPLE_OBJECTS:
        image, _ = render_object(name, size, rng)
        file_name = name.replace(" ", "_") + ".png"
        image.save(os.path.join(folder, file_name))
        human, _, _, _, part_name, _ = instructions_for(name, CATALOG[name][0], rng)
        entries += [{"image": file_name, "instruction": human}, {"image": file_name, "instruction": part_name}]
    with open(os.path.join(folder, "examples.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1)
    return entries
