"""Several processes, one result: what a `torchrun` / `accelerate launch` run shares and what rank 0 alone does.

A launcher starts N copies of the command and sets WORLD_SIZE, RANK and LOCAL_RANK in each; nothing here runs
(no process group, not one collective) when WORLD_SIZE is unset or 1, so a single-process run is unchanged.

- ``init()`` joins the process group once, through accelerate's ``PartialState`` (gloo on CPU, nccl on CUDA), the
  same state the Trainer uses afterwards for DDP / FSDP / DeepSpeed;
- ``on_main(fn)``: rank 0 alone runs `fn` (checks and writes the output, renders the card, evaluates, publishes);
  the other ranks wait for its outcome, and an error there is raised on every rank (rank 0 prints the one `Error:`
  line; the others exit with the same code, silently);
- ``shard(items)`` / ``all_sum(tensor)``: calibration micro-batches are split round-robin over the ranks and the
  statistics gathered from them are summed in float64, so every rank ends with the same reduced numbers.

A rank that dies is noticed by the launcher (torchrun's agent stops the other workers); a collective waits at most
HF_LAYERPRUNE_DIST_TIMEOUT seconds (default 3 hours: rank 0 may evaluate and save a large model meanwhile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from hf_layerprune.runtime.errors import ConfigError, LayerPruneError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 3 * 3600


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


def world() -> World:
    """This process's place, from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    size = _env_int("WORLD_SIZE", "1")
    if size <= 1:
        return World()
    rank = _env_int("RANK", "0")
    local = _env_int("LOCAL_RANK", str(rank))
    if rank >= size:
        raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={size}: start the processes with torchrun or "
                          "accelerate launch")
    return World(rank, size, local)


def _env_int(name: str, default: str) -> int:
    text = os.environ.get(name, default) or default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer (set by torchrun / accelerate launch)") from None
    if value < 0:
        raise ConfigError(f"{name}={value} is negative")
    return value


def is_distributed() -> bool:
    return world().size > 1


_solo = False  # True while rank 0 runs an `on_main` stage alone: no collective may start then


def _collective() -> bool:
    """Whether to talk to the other ranks: several processes, and not inside rank 0's solo stage."""
    return not _solo and is_distributed()


def is_main() -> bool:
    return world().rank == 0


class RankFailed(LayerPruneError):
    """Raised on the ranks that waited when rank 0's part failed; rank 0 has printed the reason."""

    quiet = True


def init() -> World:
    """Join the launcher's process group once (a no-op in a single process); returns this process's World."""
    here = world()
    if here.size <= 1:
        return here
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={here.size} but {' and '.join(missing)} not set: start the run with "
                              "torchrun or accelerate launch, or unset WORLD_SIZE")

        from accelerate import PartialState

        timeout = timedelta(seconds=float(os.environ.get("HF_LAYERPRUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
        import atexit

        atexit.register(_leave)
    return here


def _leave() -> None:
    """Leave the process group before the interpreter exits: a gloo group torn down by the C++ destructors at exit
    sometimes aborts a rank ("terminate called without an active exception", exit -6) after its work is done."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001  leaving is best effort: the run's outcome is already decided
            pass


def barrier() -> None:
    if _collective():
        import torch.distributed as dist

        init()
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if not _collective():
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _device():
    import torch

    if not is_distributed():
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def all_sum(tensor):
    """`tensor` summed over the ranks, in float64, back on the CPU (unchanged in a single process)."""
    import torch

    if not _collective():
        return tensor
    import torch.distributed as dist

    init()
    total = tensor.detach().to(device=_device(), dtype=torch.float64).clone()
    dist.all_reduce(total)
    return total.cpu()


def all_sum_floats(values: list[float]) -> list[float]:
    """Python floats summed over the ranks (float64)."""
    if not _collective():
        return values
    import torch

    return all_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def shard(items: list[T]) -> list[T]:
    """This rank's share of `items`: every size-th item from its rank on (all of them in a single process)."""
    if not _collective():
        return items
    here = world()
    return items[here.rank :: here.size]


def on_main(fn: Callable[..., T], *args: Any, share: bool = False, **kwargs: Any) -> T | None:
    """Rank 0 alone runs ``fn(*args, **kwargs)``; the others wait for its outcome. An exception on rank 0 is
    re-raised there and becomes a quiet ``RankFailed`` (same exit code) elsewhere. With `share`, every rank gets
    rank 0's return value; otherwise the others get None. Inside such a stage (nested), `fn` simply runs."""
    global _solo
    if not _collective():
        return fn(*args, **kwargs)
    init()
    if not is_main():
        ok, value = broadcast(None)
        if not ok:
            error = RankFailed(value["message"])
            error.exit_code = value["exit_code"]
            raise error
        return value
    try:
        _solo = True
        result = fn(*args, **kwargs)
    except BaseException as exc:
        _solo = False
        code = exc.exit_code if isinstance(exc, LayerPruneError) else 1
        broadcast((False, {"message": f"rank 0 failed: {type(exc).__name__}: {exc}", "exit_code": code}))
        raise
    _solo = False
    broadcast((True, result if share else None))
    return result


def rank_zero_only(command: Callable[..., T]) -> Callable[..., T | None]:
    """A CLI command with nothing to share (upload, card, evaluate): rank 0 runs it alone, the others return at once."""
    import functools

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        global _solo
        if not is_distributed():
            return command(*args, **kwargs)
        if not is_main():
            return None
        _solo = True
        try:
            return command(*args, **kwargs)
        finally:
            _solo = False

    return wrapper


def per_device_batch(batch_size: int) -> int:
    """Sequences per process and step so that one step still sees about `batch_size` sequences (rounded up)."""
    return max(1, -(-batch_size // world().size))


def gather_trained(trainer, module) -> None:
    """After the Trainer's run: under FSDP or DeepSpeed the trained weights are sharded over the ranks, so the full
    state dict is gathered once (accelerate's get_state_dict, whole on rank 0), its trained tensors broadcast, and
    loaded into `module` on every rank. Under DDP (and in one process) every rank already holds the same weights."""
    if not is_distributed():
        return
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    state = accelerator.get_state_dict(trainer.model_wrapped)  # a collective: every rank takes part
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    if is_main():
        state = {k: v.cpu() for k, v in state.items() if k in trained}
    state = broadcast(state if is_main() else None)
    accelerator.unwrap_model(trainer.model_wrapped).load_state_dict(state, strict=False)


def hub_cache_only() -> None:
    """On ranks > 0, once rank 0 has downloaded the source: huggingface_hub's offline mode, so that transformers reads
    the Hub cache and no request leaves this process (the flag is read at call time from huggingface_hub's module)."""
    if not is_distributed() or is_main():
        return
    import sys

    import huggingface_hub
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    sys.modules[huggingface_hub.is_offline_mode.__module__].HF_HUB_OFFLINE = True


def world_record() -> dict[str, int]:
    """The report's `world_size` field, in a multi-process run only (a single-process report is unchanged)."""
    size = world().size
    return {"world_size": size} if size > 1 else {}


def check_recipe(recipe, trains: bool) -> None:
    """What a multi-process launch cannot do, refused on every rank before any work (and the group joined).
    `trains`: the recipe's heal chain has a trained healer (healing.trains)."""
    if not is_distributed():
        return
    if recipe.device_map:
        raise ConfigError("--device-map splits one model over the GPUs of one process; with torchrun or "
                              "accelerate launch each process holds its own copy: drop --device-map")
    if recipe.granularity != "block" and trains:
        raise ConfigError(f"--granularity {recipe.granularity} with a trained --heal runs in one process: "
                              "launch it without torchrun / accelerate")
    init()


def check_launch() -> str | None:
    """A note when a launcher asked for several processes but started this one alone: accelerate 1.x's `--cpu`
    (or a `distributed_type: MULTI_CPU` config) runs one process unless mpirun is used, yet sets MASTER_ADDR for
    num_processes > 1. None when nothing looks wrong."""
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and env.get("MASTER_ADDR") and not is_distributed():
        return ("accelerate launched one process although several were asked for (its --cpu / MULTI_CPU launch needs "
                "mpirun): launch with `accelerate launch --multi_gpu --num_processes N` (gloo on a CPU-only machine) "
                "or `torchrun --nproc_per_node N`")
    return None


def quiet_stream():
    """Where a non-zero rank's display writes: nowhere (rank 0 shows the run)."""
    return open(os.devnull, "w", encoding="utf-8")
