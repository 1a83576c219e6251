"""What the benchmark scripts share: fresh processes, peak memory, the machine, the report files.

Scripts are run as ``python benchmarks/<script>.py``, so this file is imported as a sibling
(``import harness``: the script's folder is ``sys.path[0]``, in the fresh processes too).

- Fresh processes: ``run_fresh`` runs ``python <argv>`` in a new process and returns its result,
  the dict that the child passed to ``emit`` (its last ``emit`` line on stdout), with its exit
  status, wall time and output. ``python benchmarks/harness.py -m MODULE ARGS...`` runs a
  module that is not a benchmark's own as ``python -m`` would (``--import MODULE``: only imports
  it) and emits its peak RSS and CPU time when it ends.
- Peak memory, one way: ``peak_rss_mb`` is the process's peak resident set size, the kernel's
  high-water mark ``VmHWM`` in ``/proc/self/status`` (what every "peak RSS" / "peak MB" in
  ``benchmarks/results`` means), and ``reset_peak_rss`` resets it (Linux >= 4.0) so that one
  phase of a run can be measured alone. It counts the memory of this process image only: unlike
  ``getrusage``'s ``ru_maxrss`` it does not carry the parent's peak over fork and exec.
- The machine: ``machine`` (CPU, cores, RAM, torch and Python versions in one line).
- Config overrides: ``parse_sets`` reads ``--set KEY=VALUE`` flags as the package's CLI reads
  ``--KEY=VALUE`` (a Python literal where one parses, else the string).
- Report files: ``command`` (the exact command line), ``header`` (its Command / Hardware lines),
  ``table`` (a markdown table), ``write_report`` (writes the measured part of a results file and
  keeps its hand-written analysis, see ``ANALYSIS_MARK``), ``pyplot``, ``log_log`` and
  ``save_png`` (the figures).
"""

import ast
import contextlib
import importlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULT_MARK = "@harness-result "
ANALYSIS_MARK = (
    "<!-- analysis: written by hand below this line; the script that writes this file keeps it -->"
)


# ---- the machine -------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(threads=None, **versions) -> str:
    """``<cpu>, <n> cores, <RAM> GiB RAM, torch <v>, Python <v>`` in one line.

    ``threads`` adds ``, <threads> thread(s)`` (a number) or ``, <threads>`` (a phrase, e.g.
    ``"OMP_NUM_THREADS=1"``); keyword arguments add
    ``, <name> <version>`` (e.g. ``pyarrow=pa.__version__``).
    """
    import torch

    parts = [cpu_name(), f"{os.cpu_count()} cores"]
    try:
        parts.append(
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
        )
    except (ValueError, OSError, AttributeError):
        pass
    parts += [f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    if threads is not None:
        parts.append(f"{threads} thread(s)" if isinstance(threads, int) else str(threads))
    parts += [f"{name} {version}" for name, version in versions.items()]
    return ", ".join(parts)


# ---- peak memory -------------------------------------------------------------------------------


def _status_mb(field):
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: ``VmHWM`` (since exec or the last
    ``reset_peak_rss``). Where there is no ``/proc`` (not Linux): ``ru_maxrss``."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (``VmRSS``; nan without ``/proc``)."""
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now


def reset_peak_rss() -> None:
    """Set the peak RSS to the RSS now (``/proc/self/clear_refs``; a no-op where that fails)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# ---- fresh processes ---------------------------------------------------------------------------


def emit(result: dict) -> None:
    """Hand ``result`` (JSON-serialisable) to the ``run_fresh`` that started this process."""
    print(RESULT_MARK + json.dumps(result), flush=True)


@dataclass
class Fresh:
    """What ``run_fresh`` returns: the child's ``emit``-ted dict (None if it emitted nothing),
    its exit status, its stdout without the result line, its stderr (empty when it went to a
    file), wall seconds, and whether the timeout killed it."""

    result: dict
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None and not self.timed_out

    def error(self) -> str:
        """One line that says why it failed (the last line of stderr, else the exit status)."""
        if self.timed_out:
            return "timeout"
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {self.returncode}"


def run_fresh(argv, *, env=None, cwd=None, timeout=None, stderr_path=None, mem_limit_bytes=None):
    """Run ``python <argv...>`` (this interpreter) in a new process and wait for it.

    ``env``: variables to set on top of this process's environment (a value None removes one);
    ``stderr_path``: write the child's stderr to this file instead of keeping it;
    ``mem_limit_bytes``: cap the child's address space (``RLIMIT_AS``). Returns a ``Fresh``.
    """
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit_bytes, mem_limit_bytes))

    t0 = time.perf_counter()
    with open(stderr_path, "w") if stderr_path else contextlib.nullcontext(subprocess.PIPE) as err:
        try:
            proc = subprocess.run(
                [sys.executable, *map(str, argv)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=full_env,
                cwd=cwd,
                timeout=timeout,
                check=False,
                preexec_fn=limit if mem_limit_bytes else None,
            )
        except subprocess.TimeoutExpired as e:
            out = (
                e.stdout.decode(errors="replace")
                if isinstance(e.stdout, bytes)
                else (e.stdout or "")
            )
            return Fresh(None, -9, out, "", time.perf_counter() - t0, timed_out=True)
    wall_s = time.perf_counter() - t0
    result, kept = None, []
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
        else:
            kept.append(line)
    stdout = "\n".join(kept) + ("\n" if kept else "")
    return Fresh(result, proc.returncode, stdout, proc.stderr or "", wall_s)


def _run_foreign(argv):
    """``-m MODULE ARGS...``: run the module as ``python -m`` would; ``--import MODULE``: import
    it only. Then ``emit`` this process's peak RSS and CPU seconds (user + system)."""
    import runpy

    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if (
        len(argv) < 2
        or argv[0] not in ("-m", "--import")
        or (argv[0] == "--import" and len(argv) > 2)
    ):
        sys.exit("usage: python benchmarks/harness.py (-m MODULE [ARGS...] | --import MODULE)")
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            importlib.import_module(argv[1])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    emit({"peak_rss_mb": peak_rss_mb(), "cpu_s": usage.ru_utime + usage.ru_stime})
    sys.exit(code)


# ---- config overrides --------------------------------------------------------------------------


def parse_sets(items, parser) -> dict:
    """``["lr=0.01", "loss_type=CE"]`` -> ``{"lr": 0.01, "loss_type": "CE"}``; a malformed item
    ends in ``parser.error`` (one line, exit 2)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


# ---- report files ------------------------------------------------------------------------------


def command(argv=None) -> str:
    """The command line that ran this script, as it is typed from the repository root."""
    argv = sys.argv if argv is None else argv
    script = f"python benchmarks/{Path(argv[0]).name}"
    return script + (" " + shlex.join(argv[1:]) if len(argv) > 1 else "")


def header(title, cmd, hardware, *more) -> list:
    """``# title``, then ``Command: `cmd` ``, ``Hardware: ...`` and each of ``more`` as lines
    of one paragraph, then an empty line."""
    lines = [f"# {title}", "", f"Command: `{cmd}`  ", f"Hardware: {hardware}"]
    for line in more:
        lines[-1] += "  "
        lines.append(line)
    return lines + [""]


def table(head, rows, align=None) -> list:
    """A markdown table as lines: ``head`` (cells), ``rows`` (lists of cells, any type, str()-ed),
    ``align``: ``l`` (left, the default) or ``r`` (right) a column, e.g. ``"lrr"``."""
    align = align or "l" * len(head)
    rule = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return lines


def write_report(path, lines) -> Path:
    """Write ``lines`` (a list of lines or a str) to ``path``; if the file already holds an
    ``ANALYSIS_MARK`` line, that line and the hand-written text after it are kept at the end."""
    path = Path(path)
    text = lines if isinstance(lines, str) else "\n".join(lines)
    text = text.rstrip("\n") + "\n"
    if path.exists():
        old = path.read_text(encoding="utf-8")
        at = old.find(ANALYSIS_MARK)
        if at >= 0:
            text += "\n" + old[at:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        print('the plots need matplotlib: pip install -e ".[bench]"', file=sys.stderr)
        sys.exit(2)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_log(ax, xlabel, ylabel, title=None, xbase=10):
    """Log-log axes with labels, a light grid and the legend."""
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def save_png(fig, path, dpi=120) -> Path:
    """Lay ``fig`` out, write it to ``path`` as PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


if __name__ == "__main__":
    _run_foreign(sys.argv[1:])
