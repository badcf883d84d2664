"""Data-parallel training of the tiny GPT, with checkpoints that survive the end of a Slurm job.

Start it with torchrun (one node or several):
    torchrun --standalone --nproc-per-node 2 train_ddp.py --steps 200 --run-dir runs/demo
or with srun, one process per Slurm task (see train_ddp.sbatch): RANK, WORLD_SIZE and LOCAL_RANK
then come from SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID, and MASTER_ADDR/MASTER_PORT from the
batch script.

Every rank holds a full copy of the model and trains on its own random windows of the text;
DistributedDataParallel averages the gradients over all ranks in backward(), so the copies stay
identical. The backend is NCCL on GPUs and gloo on CPUs, chosen automatically.

On SIGUSR1 (Slurm's --signal=USR1@seconds before the time limit) or SIGTERM (scancel, preemption,
torchrun shutting down) the ranks agree to stop at the same step, rank 0 saves a checkpoint and,
inside a Slurm job started with --requeue, puts the job back in the queue; the next start resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tinygpt.py sits next to this script
from tinygpt import GPT, CharTokenizer, GPTConfig, estimate_loss, random_windows, stdlib_text  # noqa: E402

STOP_SIGNALS = {signal.SIGUSR1: "USR1", signal.SIGTERM: "TERM"}
stop_requested: list[str] = []


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoint and logs (shared by all ranks)")
    p.add_argument("--steps", type=int, default=200, help="total optimizer steps, counted across restarts")
    p.add_argument("--data-size", choices=("small", "full"), default="small")
    p.add_argument("--batch", type=int, default=16, help="sequences per rank and step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step (demos of stopping)")
    p.add_argument("--requeue", action="store_true",
                   help="after a stop signal inside a Slurm job, requeue the job (submit with --requeue)")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    return p.parse_args(argv)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else from Slurm's."""
    env = os.environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    return rank, world, local


def log(message: str) -> None:
    # one write per line: the ranks share stdout, and separate writes of text and newline interleave
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def on_signal(signum, frame):
    stop_requested.append(STOP_SIGNALS[signum])


def job_allows_requeue(job: str) -> bool:
    """Whether the Slurm job may be requeued (sbatch --requeue, or the cluster's default)."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return "Requeue=1" in shown


def save_checkpoint(path: Path, model, optimizer, step: int, losses: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "losses": losses}, tmp)
    os.replace(tmp, path)      # atomic: a job killed while saving leaves the previous checkpoint intact


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, local_rank = distributed_env()
    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    backend = ("nccl" if use_cuda else "gloo") if args.backend == "auto" else args.backend
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    dist.init_process_group(backend, rank=rank, world_size=world)
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    who = f"rank {rank}/{world}"

    text = stdlib_text()
    tok = CharTokenizer(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    torch.manual_seed(args.seed)                  # the same initial weights on every rank
    model = GPT(GPTConfig.for_size(tok.vocab_size, args.data_size)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    ckpt_path = args.run_dir / "checkpoint.pt"
    step, losses = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        log(f"{who} on {socket.gethostname()} ({backend}, {device}): resumed from step {step}")
    else:
        log(f"{who} on {socket.gethostname()} ({backend}, {device}): starting from scratch")
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)

    stopped_by = None
    start = time.perf_counter()
    while step < args.steps:
        # Each rank draws its own windows; seeding by (seed, rank, step) makes a resumed run draw
        # exactly what an uninterrupted one would have.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + rank * 10_007 + step)
        x, y = random_windows(train_data, args.batch, model.cfg.context, gen)
        _, loss = ddp(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                          # DDP all-reduces (averages) the gradients here
        optimizer.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            log(f"{who} step {step} loss {loss.item():.4f}")
            losses.append((step, loss.item()))
        if args.step_delay:
            time.sleep(args.step_delay)
        # All ranks must stop at the same step, or the next all-reduce would wait forever: agree
        # on "someone got a signal" with a tiny all-reduce of our own.
        flag = torch.tensor([1.0 if stop_requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            stopped_by = stop_requested[0] if stop_requested else "a signal to another rank"
            break
        if rank == 0 and step % args.checkpoint_every == 0:
            save_checkpoint(ckpt_path, model, optimizer, step, losses)

    if rank == 0:
        args.run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt_path, model, optimizer, step, losses)
    dist.barrier()
    if stopped_by:
        log(f"{who}: stopping at step {step} on {stopped_by}; checkpoint saved")
        job = os.environ.get("SLURM_JOB_ID")
        if rank == 0 and job and args.requeue:
            if job_allows_requeue(job):
                # back to the queue with the same job id; the next start resumes from the checkpoint
                log(f"{who}: requeueing Slurm job {job}")
                subprocess.run(["scontrol", "requeue", job], check=False)
            else:
                log(f"{who}: not requeueing Slurm job {job}: it was submitted with --no-requeue")
    else:
        val = estimate_loss(model, val_data, batches=4, batch=args.batch, device=device, seed=args.seed)
        log(f"{who}: done at step {step} in {time.perf_counter() - start:.1f} s, "
              f"validation loss {val:.4f}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
