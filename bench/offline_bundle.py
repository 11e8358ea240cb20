"""The wheels `bench/gpu_check.sh` needs on an offline node, and the check of what a node already has.

    python bench/offline_bundle.py build DIR [--python-version 3.12] [--platform TAG ...] [--have FREEZE.txt]
    python bench/offline_bundle.py check            # exit 2 with one line when a requirement is missing or too old

`build` runs on a machine with the package index (`bash bench/offline_wheels.sh` calls it). The check's
requirements are the project's runtime requirements (setup.cfg's `install_requires` and the `lora` extra: the
check trains with LoRA), less what its path never imports: `datasets` and `pyarrow` (on a node without
`datasets`, `pisa_model.data.load_rows` reads the generated release folder straight from its files) and torch
(the node's own CUDA build: never bundled, never resolved, since its wheel alone is 0.5-1 GB). A requirement
the target does not satisfy is bundled at the project's lower bound (`.ci/constraints-min.txt`, the versions
CI's lower-bound run proves); what those wheels require in turn is resolved for the target interpreter one
level at a time, taking what the target has (`--have`, a `pip freeze` of it) when it satisfies every
requirement on it, else the newest version that does, as a binary wheel for the target's tags
(`--only-binary=:all:`). The project's own wheel (`pip wheel --no-deps .`) is always in the bundle. The
folder gets one wheel per package and `bundle.txt`, which says what was bundled, what the target was taken to
have, and the size.
"""

import argparse
import configparser
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "instructpart"
# Never bundled: the node's own build (CUDA), whatever its version; the check prints it.
NEVER_BUNDLED = {"torch"}
# The check's path never imports these (see the module docstring).
NOT_ON_CHECK_PATH = {"datasets", "pyarrow"}
CHECK_EXTRAS = ("lora",)
# The tags a manylinux x86_64 node accepts, newest first, and pure-Python wheels (`any`).
DEFAULT_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)
MAX_BUNDLE_MB = 60
MAX_ROUNDS = 20


def check_requirements() -> list:
    """The requirements of the GPU check's path: `Requirement`s from setup.cfg, less those it never needs."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options"]["install_requires"].split("\n")
    for extra in CHECK_EXTRAS:
        lines += parser["options.extras_require"][extra].split("\n")
    requirements = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    skipped = NEVER_BUNDLED | NOT_ON_CHECK_PATH
    return [r for r in requirements if canonicalize_name(r.name) not in skipped]


def lower_bounds() -> dict:
    """{name: version} pinned in .ci/constraints-min.txt (the lower bounds CI proves)."""
    pins = {}
    with open(os.path.join(ROOT, ".ci", "constraints-min.txt")) as handle:
        for line in handle:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[canonicalize_name(name)] = version.strip()
    return pins


def read_freeze(path: str) -> dict:
    """{name: version} of a `pip freeze` (`name==version` lines; comments, editables and URLs skipped)."""
    have = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.split("#")[0].strip()
            if not line or line.startswith("-") or " @ " in line:
                continue
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path}: line {number}: not a `name==version` line of pip freeze: {line!r}")
            have[canonicalize_name(name)] = version.strip()
    return have


def marker_environment(python_version: str, platforms: tuple) -> dict:
    machine = next((p.rsplit("_", 1)[-1] for p in platforms if p != "any"), "x86_64")
    machine = "x86_64" if machine == "64" else machine
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
        "extra": "",
    }


def _applies(requirement: Requirement, environment: dict) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(environment)


def _pip_target_options(python_version: str, platforms: tuple) -> list:
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def pick_versions(requirements: list, python_version: str, platforms: tuple) -> dict:
    """{name: (version, [requires_dist])} that pip picks for `requirements` (strings) on the target, without
    their dependencies (`pip install --dry-run --no-deps --report`)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q"]
        command += ["--report", report, "--target", os.path.join(scratch, "target")]
        command += _pip_target_options(python_version, platforms) + list(requirements)
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            lines = [line for line in run.stderr.splitlines() if line.startswith("ERROR")] or run.stderr.splitlines()
            raise RuntimeError(
                f"pip found no wheel for the target: {lines[-1] if lines else 'exit ' + str(run.returncode)}"
            )
        with open(report) as handle:
            picked = json.load(handle)["install"]
    return {
        canonicalize_name(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["metadata"].get("requires_dist", []),
        )
        for item in picked
    }


def resolve(have: dict, python_version: str, platforms: tuple, log=print) -> tuple:
    """Decide what to bundle: returns ({name: version} to bundle, {name: version} taken from the target)."""
    environment = marker_environment(python_version, platforms)
    pins = lower_bounds()
    specs, roots = {}, set()
    for requirement in check_requirements():
        name = canonicalize_name(requirement.name)
        specs[name] = specs.get(name, SpecifierSet()) & requirement.specifier
        roots.add(name)
    bundled, from_target, pending = {}, {}, set(specs)
    for _ in range(MAX_ROUNDS):
        if not pending:
            break
        wanted = []
        for name in sorted(pending):
            if name in NEVER_BUNDLED:
                from_target[name] = have.get(name, "(the node's own)")
            elif name in have and specs[name].contains(have[name], prereleases=True):
                from_target[name] = have[name]
                bundled.pop(name, None)
            elif name in roots and name in pins and specs[name].contains(pins[name], prereleases=True):
                wanted.append(f"{name}=={pins[name]}")
            else:
                wanted.append(f"{name}{specs[name]}")
        pending = set()
        if not wanted:
            continue
        log(f"resolving for Python {python_version}: {' '.join(wanted)}")
        for name, (version, requires) in pick_versions(wanted, python_version, platforms).items():
            from_target.pop(name, None)
            bundled[name] = version
            for line in requires:
                requirement = Requirement(line)
                if not _applies(requirement, environment):
                    continue
                dependency = canonicalize_name(requirement.name)
                specs[dependency] = specs.get(dependency, SpecifierSet()) & requirement.specifier
                chosen = bundled.get(dependency, from_target.get(dependency))
                if dependency in NEVER_BUNDLED:
                    from_target.setdefault(dependency, have.get(dependency, "(the node's own)"))
                elif chosen is None or not specs[dependency].contains(chosen, prereleases=True):
                    pending.add(dependency)
    else:
        raise RuntimeError(f"no consistent set after {MAX_ROUNDS} rounds: {', '.join(sorted(pending))}")
    return bundled, from_target


def build_project_wheel(destination: str) -> None:
    """`pip wheel --no-deps` of this checkout, built from a copy of its files (those git tracks or would track),
    so that setuptools' build/ and egg-info folders land in the copy, not in the checkout."""
    listing = subprocess.run(
        ["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=False,
    )
    with tempfile.TemporaryDirectory() as tree:
        if listing.returncode == 0:
            for name in filter(None, listing.stdout.decode().split("\0")):
                source = os.path.join(ROOT, name)
                if os.path.isfile(source):  # a tracked file deleted in the work tree is left out
                    os.makedirs(os.path.dirname(os.path.join(tree, name)), exist_ok=True)
                    shutil.copy2(source, os.path.join(tree, name))
        else:  # not a git checkout (an unpacked source archive): its files less the usual build leftovers
            ignored = shutil.ignore_patterns(".venv*", "build", "dist", "*.egg-info", "__pycache__", "out")
            shutil.copytree(ROOT, tree, ignore=ignored, dirs_exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", destination, tree], check=True)


def build(args) -> int:
    platforms = tuple(args.platform or DEFAULT_PLATFORMS)
    output = os.path.abspath(args.dir)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        print(f"offline_wheels.sh: error: {output}: exists and is not an empty folder", file=sys.stderr)
        return 2
    try:
        have = read_freeze(args.have) if args.have else {}
    except (OSError, ValueError) as error:
        print(f"offline_wheels.sh: error: {error}", file=sys.stderr)
        return 2
    bundled, from_target = resolve(have, args.python_version, platforms)
    staging = tempfile.mkdtemp(prefix=".offline-wheels-", dir=os.path.dirname(output))
    try:
        if bundled:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", staging]
            command += _pip_target_options(args.python_version, platforms)
            command += [f"{name}=={version}" for name, version in sorted(bundled.items())]
            subprocess.run(command, check=True)
        build_project_wheel(staging)
        wheels = sorted(name for name in os.listdir(staging) if name.endswith(".whl"))
        names = [canonicalize_name(parse_wheel_filename(name)[0]) for name in wheels]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RuntimeError(f"more than one version of {', '.join(repeated)} in the bundle")
        total = sum(os.path.getsize(os.path.join(staging, name)) for name in wheels)
        lines = [
            f"# bench/gpu_check.sh --wheels bundle for CPython {args.python_version} on {', '.join(platforms)}",
            f"# {len(wheels)} wheels, {total / 1e6:.1f} MB",
            "# bundled:",
            *wheels,
            "# taken from the target"
            + (f" ({os.path.basename(args.have)})" if args.have else " (never bundled)")
            + ":",
            *(f"# {name}=={version}" for name, version in sorted(from_target.items())),
        ]
        with open(os.path.join(staging, "bundle.txt"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.makedirs(os.path.dirname(output), exist_ok=True)
        if os.path.isdir(output):
            os.rmdir(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print("\n".join(lines))
    print(f"bundle: {output}: {len(wheels)} wheels, {total / 1e6:.1f} MB (limit {MAX_BUNDLE_MB} MB)")
    if total > MAX_BUNDLE_MB * 1e6:
        print(f"offline_wheels.sh: error: {output}: {total / 1e6:.1f} MB is over {MAX_BUNDLE_MB} MB", file=sys.stderr)
        return 1
    return 0


def installed_version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check(args) -> int:
    """One line naming every requirement of the check's path that this interpreter lacks or has too old."""
    problems = []
    for requirement in check_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        found = installed_version(requirement.name)
        if found is None:
            problems.append(f"{requirement.name} is not installed")
        elif not requirement.specifier.contains(Version(found), prereleases=True):
            problems.append(f"{requirement.name} {found} does not satisfy {requirement}")
    if problems:
        print(
            f"gpu_check.sh: error: {'; '.join(problems)}: on a machine with the package index run `bash "
            f"bench/offline_wheels.sh DIR --python-version {sys.version_info.major}.{sys.version_info.minor} --have "
            "FREEZE.txt` (FREEZE.txt: `pip freeze` here), copy DIR here, then `bash bench/gpu_check.sh --wheels DIR`",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="download the bundle (needs the package index)")
    build_parser.add_argument("dir", help="the bundle folder to write (must not exist, or be empty)")
    build_parser.add_argument("--python-version", default="3.12", help="the target's Python (default: 3.12)")
    build_parser.add_argument(
        "--platform", action="append", help=f"a wheel platform tag; repeatable (default: {' '.join(DEFAULT_PLATFORMS)})"
    )
    build_parser.add_argument("--have", help="a `pip freeze` of the target: what it satisfies is not bundled")
    commands.add_parser("check", help="one line when this interpreter lacks a requirement of the check")
    args = parser.parse_args(argv)
    return build(args) if args.command == "build" else check(args)


if __name__ == "__main__":
    sys.exit(main())
