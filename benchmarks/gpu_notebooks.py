"""GPU-relevant notebooks at full size: time on the GPU, time on the CPU, ratio, GPU utilisation.

Runs every course and tutorial notebook whose metadata says `requires_gpu: true` with papermill,
first with DEVICE=cuda DATA_SIZE=full, then with DEVICE=cpu DATA_SIZE=full on `--cpu-cores` cores
(2 by default, the CI machine's size), and prints per notebook both wall times, their ratio and the
GPU utilisation sampled every half second during the GPU run (pynvml if installed, else nvidia-smi).
The issue's targets: full data at least 10x faster on an H100 than on 2 CPU cores, and the GPU busy
at least 50 % of the time.

The utilisation is sampled over the whole papermill run, kernel start and data generation included,
so it is a lower bound for the training loops themselves. A CPU run that exceeds `--cpu-timeout` is
stopped; its ratio is then reported as a lower bound (">").

    /opt/aifactory/venv/bin/python benchmarks/gpu_notebooks.py                      # all, needs CUDA
    /opt/aifactory/venv/bin/python benchmarks/gpu_notebooks.py --only 05-training-at-scale --cpu-timeout 1800

Exits with status 2 and says so when PyTorch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("courses/*/[0-9][0-9]-*.ipynb")) + sorted(ROOT.glob("notebooks/[0-9][0-9]-*.ipynb"))


def gpu_notebooks(only: list[str]) -> list[Path]:
    chosen = []
    for path in NOTEBOOKS:
        meta = json.loads(path.read_text()).get("metadata", {}).get("aifactory", {})
        if meta.get("requires_gpu") and (not only or any(o in str(path) for o in only)):
            chosen.append(path)
    return chosen


class UtilisationSampler:
    """Samples the utilisation (%) of one GPU in a thread until stopped."""

    def __init__(self, index: int = 0, interval: float = 0.5):
        self.index, self.interval = index, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "pynvml"
        except Exception:        # pynvml missing or failing: nvidia-smi gives the same counter
            self._read = self._nvidia_smi
            self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "none"

    def _nvidia_smi(self) -> float | None:
        if self.source == "none":
            return None
        out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _run(self):
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_papermill(notebook: Path, device: str, timeout: float, cores: list[int] | None) -> tuple[float, str]:
    """Wall seconds and outcome ('ok', 'failed: ...', 'timeout') of one full-size papermill run."""
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        for extra in notebook.parent.iterdir():       # scripts a notebook calls, as in a student's copy
            if extra.is_file() and extra.suffix not in (".ipynb", ".yaml"):
                shutil.copy2(extra, Path(work) / extra.name)
        cmd = [sys.executable, "-m", "papermill", str(notebook), str(Path(work) / notebook.name),
               "-p", "DEVICE", device, "-p", "DATA_SIZE", "full", "-k", "python3", "--cwd", work,
               "--no-progress-bar", "--execution-timeout", str(int(timeout))]

        def pin():
            if cores:
                os.sched_setaffinity(0, cores)        # the kernel inherits it: the CPU run gets N cores

        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=pin, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return time.perf_counter() - start, "timeout"
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            last = output.strip().splitlines()[-1][:200] if output.strip() else "no output"
            return seconds, f"failed: {last}"
        return seconds, "ok"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="substrings of notebook paths to run")
    parser.add_argument("--cpu-cores", type=int, default=2, help="cores for the CPU runs (default 2)")
    parser.add_argument("--cpu-timeout", type=float, default=3600, help="seconds before a CPU run is stopped")
    parser.add_argument("--gpu-timeout", type=float, default=1800)
    parser.add_argument("--skip-cpu", action="store_true", help="GPU runs only (no ratio)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("No CUDA device: PyTorch sees no GPU here (CPU-only build, no driver, or no GPU allocated, "
              "e.g. the demo cluster's fake GPUs). Run this in a GPU session or job, e.g.\n"
              "  srun --partition=gpu --gres=gpu:1 --cpus-per-task=8 --time=04:00:00 "
              f"{sys.executable} benchmarks/gpu_notebooks.py", file=sys.stderr)
        return 2
    notebooks = gpu_notebooks(args.only)
    if not notebooks:
        print("no notebook with requires_gpu: true matches", args.only, file=sys.stderr)
        return 1
    gpu_name = torch.cuda.get_device_name(0)
    available = sorted(os.sched_getaffinity(0))
    cores = available[:args.cpu_cores]
    print(f"GPU: {gpu_name} | CPU runs on {len(cores)} of {len(available)} cores | {len(notebooks)} notebooks\n")

    results = []
    for notebook in notebooks:
        name = str(notebook.relative_to(ROOT))
        with UtilisationSampler() as sampler:
            gpu_s, gpu_outcome = run_papermill(notebook, "cuda", args.gpu_timeout, None)
        samples = sampler.samples
        row = {"notebook": name, "gpu_seconds": gpu_s, "gpu_outcome": gpu_outcome,
               "gpu_util_mean": statistics.fmean(samples) if samples else None,
               "gpu_busy_share": sum(s > 0 for s in samples) / len(samples) if samples else None,
               "util_source": sampler.source}
        if not args.skip_cpu:
            cpu_s, cpu_outcome = run_papermill(notebook, "cpu", args.cpu_timeout, cores)
            row.update(cpu_seconds=cpu_s, cpu_outcome=cpu_outcome, ratio=cpu_s / gpu_s)
        results.append(row)
        util = f"{row['gpu_util_mean']:5.1f} %" if samples else "   n/a"
        busy = f"{100 * row['gpu_busy_share']:5.1f} %" if samples else "   n/a"
        line = f"{name:70} GPU {gpu_s:8.1f} s ({gpu_outcome}) util mean {util} busy {busy}"
        if not args.skip_cpu:
            bound = ">" if row["cpu_outcome"] == "timeout" else " "
            line += f" | CPU {row['cpu_seconds']:8.1f} s ({row['cpu_outcome']}) ratio {bound}{row['ratio']:6.1f}x"
        print(line, flush=True)

    print("\ntargets: ratio >= 10x on an H100, GPU utilisation >= 50 % during training")
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu_name, "cpu_cores": len(cores), "results": results}, indent=1))
    return 0 if all(r["gpu_outcome"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
