"""Issue 20 item 10: a results file is validated against the layout the package writes before it goes into a
model card (one-line refusals naming the file and the field), and its provenance text is escaped and stripped of
local paths there."""

import json
import math
import warnings

import pytest

from instructpart_metric import provenance
from instructpart_metric.paper import paper_row
from pisa_model.model_card import _eval_results, _evaluation_section, load_results

METRICS = {"gIoU": 0.5, "cIoU": 0.25, "P@50:95": 0.1, "P@50": 0.5}


def _results(**changes):
    """A results file as `pisa_model.evaluate` writes it (TRPS only), then `changes` applied by dotted path."""
    by_type = {"human": dict(METRICS), "gpt4": dict(METRICS)}
    results = {
        "configs": {"trps": {"all": {**METRICS, "num_samples": 16}, "by": {"instruction_type": by_type}}},
        "paper": {"orps_form": "question", "columns": paper_row(by_type)},
        "provenance": {
            "package": {"name": "instructpart", "version": provenance.package_version()},
            "command": "python -m pisa_model.evaluate --model /home/alice/ckpt --data-dir /home/alice/data/InstructPart",
            "orps_form": "question",
            "dataset": {
                "source": "/home/alice/data/InstructPart",
                "split": "test",
                "configs": {"trps": {"rows": 16, "fingerprint": "sha256:" + "cd" * 32}},
            },
        },
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = results
        for key in parents:
            target = target[key]
        target[last] = value
    return results


def _write(tmp_path, results, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(results))  # json writes NaN/Infinity as bare tokens, which json.load reads back
    return str(path)


def test_a_valid_file_is_taken(tmp_path):
    path = _write(tmp_path, _results())
    assert list(load_results([path])) == [path]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"configs__xrps": {"all": {**METRICS, "num_samples": 4}, "by": {}}}, "configs.xrps: unknown config"),
        ({"configs__trps__all__gIoU": math.nan}, "configs.trps.all.gIoU: nan is not a finite number"),
        ({"configs__trps__all__cIoU": math.inf}, "configs.trps.all.cIoU: inf is not a finite number"),
        ({"configs__trps__all__P@50": 50.0}, "configs.trps.all.P@50: 50.0 is outside [0, 1]"),
        ({"configs__trps__all__mIoU": 0.3}, "configs.trps.all.mIoU: unknown metric"),
        ({"configs__trps__by__instruction_type__part_name": dict(METRICS)}, "part_name: not an instruction type"),
        ({"paper__columns__trps_human_gIoU": -math.inf}, "paper.columns.trps_human_gIoU: -inf is not a finite"),
        ({"paper__columns__trps_human_mIoU": 0.2}, "paper.columns.trps_human_mIoU: unknown column"),
        ({"provenance__package__version": "1.0.0"}, "provenance.package.version: written by instructpart 1.0.0"),
        ({"provenance__dataset__configs__trps__fingerprint": "x\n- injected"}, ".fingerprint: not a sha256"),
    ],
)
def test_a_file_the_package_would_not_write_is_refused_in_one_line_naming_file_and_field(tmp_path, changes, field):
    path = _write(tmp_path, _results(**changes))
    with pytest.raises(ValueError) as error:
        load_results([path])
    message = str(error.value)
    assert message.startswith(f"{path}: ") and field in message and "\n" not in message


def test_a_newer_minor_version_is_taken_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "package_version", lambda: "0.1.0")
    path = _write(tmp_path, _results(provenance__package__version="0.3.0"))
    with pytest.warns(UserWarning, match=r"written by instructpart 0\.3\.0, newer than this 0\.1\.0"):
        load_results([path])
    older = _write(tmp_path, _results(provenance__package__version="0.0.9"), "older.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_results([older])
    assert not [w for w in caught if "newer" in str(w.message)]


def test_provenance_text_is_escaped_and_local_paths_are_dropped(tmp_path):
    results = _results(
        provenance__command="python -m pisa_model.evaluate --model /home/alice/ckpt `rm -rf` \n# heading",
    )
    path = _write(tmp_path, results)
    loaded = load_results([path])
    section = _evaluation_section(loaded, "pisa", compare_published=False)
    provenance_lines = section[section.index("Provenance:") :].splitlines()[2:]
    assert provenance_lines and all(line.startswith("- `") and line.endswith("`") for line in provenance_lines)
    assert all(line.count("`") == 2 for line in provenance_lines)  # no backtick of the record closes the code span
    assert "/home/alice" not in section and "…/ckpt" in section and "…/InstructPart" in section
    assert "\n# heading" not in section  # the record's line break does not start a Markdown heading
    assert all(math.isfinite(entry.metric_value) for entry in _eval_results(loaded, "org/instructpart"))
