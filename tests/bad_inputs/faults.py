"""Run the prunetune command line with a fault of the machine injected (used by tests/test_bad_inputs.py).

    python faults.py disk_full DIR [GLOB] -- CLI ARGS...     writes to files under DIR (name matching GLOB)
                                                             fail with ENOSPC after half their bytes
    python faults.py file_size_limit BYTES -- CLI ARGS...    a real RLIMIT_FSIZE: the kernel refuses writes
                                                             past BYTES with EFBIG (SIGXFSZ ignored)
    python faults.py read_only DIR -- CLI ARGS...            DIR is already chmod 0o500; as root, drop
                                                             CAP_DAC_OVERRIDE so the kernel honours that

`disk_full` patches Python's `open` and safetensors' `save_file`; the latter fails as the real library does
on a full disk: it leaves a partial file and raises SafetensorError("... (os error 28)"), not OSError.
Exit code 77 means the fault could not be set up here (the test then skips, saying why).
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import os
import runpy
import sys

CANNOT = 77


def _cli(args: list[str]) -> None:
    sys.argv = ["prunetune", *args]
    runpy.run_module("prunetune.cli", run_name="__main__", alter_sys=True)


def disk_full(root: str, pattern: str = "*") -> None:
    root = os.path.abspath(root) + os.sep
    real_open = io.open

    def hit(file) -> bool:
        if isinstance(file, int):
            return False
        path = os.path.abspath(os.fspath(file))
        return path.startswith(root) and fnmatch.fnmatch(os.path.basename(path), pattern)

    class FullFile:
        """A file on a full disk: the first half of a write lands, then ENOSPC."""

        def __init__(self, f, name: str) -> None:
            self._f, self._name = f, name

        def write(self, data):
            if len(data) > 1:
                self._f.write(data[: len(data) // 2])
                self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

        def writelines(self, lines) -> None:
            for line in lines:
                self.write(line)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            self._f.close()
            return False

        def __iter__(self):
            return iter(self._f)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if hit(file) and any(c in mode for c in "wax+"):
            return FullFile(f, os.fspath(file))
        return f

    io.open = builtins.open = full_open

    import safetensors.torch as st
    from safetensors import SafetensorError

    real_save = st.save_file

    def save_file(tensors, filename, metadata=None):
        if not hit(filename):
            return real_save(tensors, filename, metadata)
        data = st.save(tensors, metadata)
        with real_open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        # The message safetensors 0.x gives for a failed write (checked with a real RLIMIT_FSIZE).
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error {errno.ENOSPC})")

    st.save_file = save_file


def file_size_limit(limit: str) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
    n = int(limit)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def read_only(folder: str, args: list[str]) -> None:
    if os.geteuid() == 0 and os.environ.get("_FAULTS_DAC_DROPPED") != "1":
        # Root ignores permission bits through CAP_DAC_OVERRIDE; dropping it from the bounding set and
        # exec'ing again gives a root process that the kernel treats like any other user.
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                print(f"faults: cannot drop capability {cap} (errno {ctypes.get_errno()}): running as root without "
                      "CAP_SETPCAP, permission bits cannot be enforced", file=sys.stderr)
                sys.exit(CANNOT)
        os.environ["_FAULTS_DAC_DROPPED"] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "read_only", folder, "--", *args])
    probe = os.path.join(folder, ".faults-probe")
    try:
        os.mkdir(probe)
    except OSError:
        return  # unwritable, as wanted
    os.rmdir(probe)
    print(f"faults: {folder} is writable despite chmod 0o500 (file system ignores permissions?)", file=sys.stderr)
    sys.exit(CANNOT)


def main() -> None:
    if "--" not in sys.argv:
        sys.exit(__doc__)
    cut = sys.argv.index("--")
    mode, params, args = sys.argv[1], sys.argv[2:cut], sys.argv[cut + 1:]
    if mode == "disk_full":
        disk_full(*params)
    elif mode == "file_size_limit":
        file_size_limit(*params)
    elif mode == "read_only":
        read_only(params[0], args)
    else:
        sys.exit(f"faults: unknown fault {mode!r}")
    _cli(args)


if __name__ == "__main__":
    main()
