"""The metric Space (`app.py`, staged by upload.py beside the renamed module script and its card).

Try it locally (it scores with this package's module script and shows its card):

    python -m instructpart_metric.space [--dataset path/to/hub-export-or-ORG/instructpart] [--port 7860]
"""

import os

APP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")
