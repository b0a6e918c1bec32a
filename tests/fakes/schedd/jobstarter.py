"""The per-job starter process: runs one job and records how it ended, outliving the daemon.

HTCondor's ``condor_starter`` runs on the execute node, not in the schedd: when the schedd
crashes, the starter keeps the job running and, when the job ends, keeps its exit status
until a restarted schedd reconnects. This is that, for the stand-in. The daemon starts

    python -I -S jobstarter.py EXIT_FILE -- ARGV...

with the job's cwd, environment and stdio, in a session of its own. This process starts
ARGV, waits for it, writes its wait status to EXIT_FILE (atomically; with the errno when
ARGV could not be executed), then kills what the job left in its process group (itself
included), as the starter does.

Standard library only, no package imports: it runs with ``-I -S`` in the job's environment.
"""

import json
import os
import signal
import subprocess
import sys


def _ignore(signum, frame):
    """Survive the SIGTERM/SIGINT/SIGHUP sent to the job's process group to record the exit.

    A handler, not SIG_IGN: handlers are reset at exec, so the job gets the default.
    """


def main(argv):
    exit_file, sep, command = argv[0], argv[1], argv[2:]
    if sep != "--" or not command:
        sys.stderr.write("usage: jobstarter.py EXIT_FILE -- ARGV...\n")
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, _ignore)
    try:
        job = subprocess.Popen(command, close_fds=True)
    except OSError as exc:
        ended = {"returncode": 127, "exec_error": [exc.errno or 0, exc.strerror or str(exc)]}
    else:
        ended = {"returncode": job.wait()}
    partial = exit_file + ".part"
    with open(partial, "w") as f:
        f.write(json.dumps(ended))
    os.replace(partial, exit_file)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # the job's leftovers, and this process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
