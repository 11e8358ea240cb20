"""Run `python -m pisa_model.train` as several processes on this machine with Accelerate's own launcher (torchrun
underneath), as `python -m pisa_model.train --num-processes N ...` does, and keep the command's contract: the
processes' own output and exit status (2 for a refusal, printed once by the main process; 1 for a failed operation;
0 for success), with no launcher report added.

`accelerate launch` cannot give that: its launcher exits 1 for any failed process and adds its own report (a
`CalledProcessError` traceback for one process, torch elastic's `ChildFailedError` summary for several). Here the
same launcher runs in this process, its failure is caught and its logging held back while it runs.

On CPU, N real processes need `--multi_gpu` with `ACCELERATE_USE_CPU=1` (`accelerate launch --cpu --num_processes N`
silently runs one), which is what `launch_training` asks for.
"""

import contextlib
import logging
import sys

TRAINING_MODULE = "pisa_model.train"


@contextlib.contextmanager
def _launcher_logging_held_back():
    """Accelerate's and torch elastic's log lines (a defaults warning, `failed (exitcode: 2) local_rank: 0 ...`)
    are the launcher's report: off while it runs. The processes it starts log as they would anywhere."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def processes_status(prog: str, failures: dict) -> int:
    """The exit status of a launch whose processes failed, from torch elastic's `{rank: ProcessFailure}`: the status
    of the lowest rank that exited with one (the processes printed their own line). A launch whose processes were all
    killed by a signal printed nothing: one line saying so here, status 1."""
    exited = sorted((rank, failure.exitcode) for rank, failure in failures.items() if failure.exitcode > 0)
    if exited:
        return exited[0][1]
    rank, failure = min(failures.items())
    print(f"{prog}: error: process {rank} was killed by {failure.signal_name()}", file=sys.stderr, flush=True)
    return 1


def launch_training(num_processes: int, argv, *, cpu: bool, mixed_precision: str, prog: str) -> int:
    """Run `python -m pisa_model.train ARGV` as `num_processes` processes on this machine (GPUs, or CPU processes
    with `cpu` or where no GPU is visible) through `accelerate launch`'s own launcher; returns their exit status."""
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from accelerate.utils import patch_environment
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    on_cpu = cpu or not torch.cuda.is_available()
    if not on_cpu and num_processes > torch.cuda.device_count():
        raise ValueError(
            f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s) visible "
            "(one process per GPU; --cpu trains on CPU processes)"
        )
    launch_args = launch_command_parser().parse_args(
        [
            *["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"],
            *["--main_process_port", "0"],  # a free port: runs side by side never collide on torchrun's 29500
            *["--mixed_precision", mixed_precision, "--dynamo_backend", "no"],
            *["-m", TRAINING_MODULE, *argv],
        ]
    )
    environment = {"ACCELERATE_USE_CPU": "1"} if on_cpu else {}
    with _launcher_logging_held_back(), patch_environment(**environment):
        try:
            launch_command(launch_args)
        except ChildFailedError as error:
            return processes_status(prog, error.failures)
    return 0
