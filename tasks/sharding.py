"""Shard a run's volumes over the GPUs of a host (or of a Ray cluster): one model replica per GPU,
loaded once and kept alive between volumes; volumes handed out one at a time as replicas free up
(in groups of `volumes_per_call` for adapters that decode several volumes together, `answer_many`),
so a fast GPU takes more; rows returned to the caller, which alone writes the warehouse.

    answer_sharded(request, items, replicas, address=None, *, run_id="", dataset=(), init_kwargs=None)
        -> Iterator[tuple[str, list[dict]]]          # (volume, its rows), in the order volumes finish

- `request`: `tasks.answering.InferRequest` (model, checkpoint, options, batch_size, device, ...). A
  `cuda...` device becomes `cuda:0` in each replica: the one GPU Ray leaves visible to it through
  `CUDA_VISIBLE_DEVICES`. Any other device (`cpu`) is used as is (tests with logical GPUs).
- `items`: `tasks.answering.WorkItem`s, e.g. `inference.work_items(plan, inference.model_inputs_for(db,
  plan), session_id)`: a volume, its questions, its `ModelInput` (a path: each replica reads the file
  itself, arrays never cross processes), the provenance its rows carry.
- `replicas`: `["cuda:0", "cuda:1"]` (these GPUs of this host, for a Ray started here; indices count
  within the caller's own `CUDA_VISIBLE_DEVICES` when it is set) or an int N (N replicas of one GPU
  each, wherever the cluster has them).
- `address`: a Ray cluster to join (`auto`, `host:6379`, `ray://head:10001`); else `$RAY_ADDRESS`; else a
  local Ray is started for this call and stopped when the iterator ends. A Ray the caller already
  initialised in this process (`ray.init`) is used and left running.
- `run_id` goes into every row; `dataset`: every `DatasetQuestion` of the data set (`adapter.prepare`:
  the baselines need it, models ignore it); `init_kwargs`: extra `ray.init` arguments for a local
  start (`{"num_gpus": 2}` declares two logical GPUs on a machine without any; the CLI reads them as
  JSON from `$CTSVQA_RAY_INIT`).

Rows are `inference.PREDICTION_SCHEMA` dicts, one per question; their provenance names the replica
(`replica`: index, pid, node, CUDA_VISIBLE_DEVICES, Ray's GPU ids, device). A replica that dies
(CUDA error, OOM kill, segfault) fails the volume it was answering — error rows with the reason —
and the others go on; that volume is not tried on another replica (what killed one would kill the
next; `--retry-failed` asks again). When every replica is gone the iterator raises `InferenceError`
after yielding what finished. Closing the iterator, an exception or Ctrl-C stops the replicas and a
Ray this call started: no Ray process outlives it (a watchdog process, tasks/ray_reaper.py, stops
them also when the caller is killed with `kill -9`). Ray's processes are started with SIGINT blocked,
so a terminal's Ctrl-C reaches only the caller, which stops them itself; a replica is never killed
by the Ctrl-C and so never stored as failed because of it.

Why Ray actors and not prefect-ray's `RayTaskRunner`: a task runner submits each Prefect task as a
stateless Ray task. By default Ray starts a new worker process per GPU task (the model would load
for every volume); with `max_calls=0` workers are reused but Ray binds no worker to a GPU, so a
model cached in a worker process could be handed another GPU's `CUDA_VISIBLE_DEVICES`, and the
number of worker processes (each holding a model) is not bounded by the number of GPUs. An actor
is a process that owns one GPU for its lifetime: exactly "load once per GPU, stay alive". The
task runner would also run our tasks in Ray's processes, where they would need the Prefect API and
could not hand rows to the one process that writes DuckDB without another hop. So the flow keeps
its own task runner; this module holds the Ray code and the flow's `answer` task calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from adapters.models.base import AdapterError, DatasetQuestion, ModelInput
from tasks import answering, ray_reaper
from tasks.answering import InferenceError, InferRequest, WorkItem

log = logging.getLogger("ctsvqa.sharding")
INIT_ENV = "CTSVQA_RAY_INIT"


@dataclass(frozen=True)
class Sharding:
    """How a run is spread: GPUs of this host by name, or a number of one-GPU replicas; where Ray is."""
    replicas: tuple[str, ...] | int
    address: str | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"replicas": list(self.replicas) if isinstance(self.replicas, tuple) else self.replicas,
                "address": self.address or os.environ.get("RAY_ADDRESS") or "local",
                **({"init": self.init_kwargs} if self.init_kwargs else {})}


def parse_devices(text: str | Sequence[str]) -> tuple[str, ...]:
    """`cuda:0,cuda:1` -> ('cuda:0', 'cuda:1'); anything else is refused in one line."""
    names = [d.strip() for d in (text.split(",") if isinstance(text, str) else text) if d.strip()]
    bad = [d for d in names if not re.fullmatch(r"cuda:\d+", d)]
    if bad or not names:
        raise ValueError(f"--devices {','.join(names) or text!r}: expected GPUs as cuda:N separated by commas, "
                         f"e.g. cuda:0,cuda:1")
    if len(set(names)) != len(names):
        raise ValueError(f"--devices {','.join(names)}: a GPU is named twice")
    return tuple(names)


def sharding_from(devices: str | Sequence[str] | None, gpus: int | None, address: str | None) -> Sharding | None:
    """The CLI's and the flow's options -> a Sharding, or None for the single-process path."""
    if devices is None and gpus is None:
        if address:
            raise ValueError("--ray-address needs --gpus N (how many one-GPU replicas to start)")
        return None
    if devices is not None and gpus is not None:
        raise ValueError("pass either --devices (GPUs of this host) or --gpus N, not both")
    if gpus is not None and gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    replicas = parse_devices(devices) if devices is not None else gpus
    if isinstance(replicas, tuple) and (address or os.environ.get("RAY_ADDRESS")):
        raise ValueError("--devices names GPUs of this host for a Ray started here; with a Ray cluster "
                         "(--ray-address or $RAY_ADDRESS) pass --gpus N")
    raw = os.environ.get(INIT_ENV, "").strip()
    try:
        init_kwargs = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"${INIT_ENV} is not JSON ({exc}); expected an object of ray.init arguments, "
                         f'e.g. {{"num_gpus": 2}}') from None
    if not isinstance(init_kwargs, dict):
        raise ValueError(f"${INIT_ENV} must be a JSON object of ray.init arguments, e.g. {{\"num_gpus\": 2}}")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("sharding over GPUs needs Ray: pip install 'ctsvqa[ray]'") from None
    if not (address or os.environ.get("RAY_ADDRESS")):
        # a Ray started here sees this host's GPUs (or the logical ones declared): too few is bad input,
        # said before Prefect and Ray start (a cluster's GPUs are counted once it is joined)
        n = len(replicas) if isinstance(replicas, tuple) else replicas
        have = init_kwargs.get("num_gpus")
        if have is None:
            import torch

            have = torch.cuda.device_count()
        if have < n:
            raise ValueError(f"{n} replica(s) need {n} GPU(s) but this host has {have:g}; pass fewer "
                             f"--gpus/--devices (or declare logical GPUs with ${INIT_ENV}='{{\"num_gpus\": {n}}}' "
                             "to test without any)")
    return Sharding(replicas, address, init_kwargs)


# -- the Ray session --------------------------------------------------------------------------

def _physical_ids(devices: Sequence[str]) -> list[str]:
    """cuda:N counts within the caller's own CUDA_VISIBLE_DEVICES, as torch would."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = []
    for d in devices:
        n = int(d.split(":")[1])
        if visible and n >= len(visible):
            raise InferenceError(f"--devices {d}: CUDA_VISIBLE_DEVICES={','.join(visible)} shows only "
                                 f"{len(visible)} GPU(s)")
        ids.append(visible[n] if visible else str(n))
    return ids


@contextlib.contextmanager
def ray_session(address: str | None, devices: Sequence[str], init_kwargs: dict[str, Any]) -> Iterator[bool]:
    """Yields whether this call started (or joined) Ray, and so shuts it down at the end."""
    import ray

    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        if devices:
            raise InferenceError("--devices names GPUs of this host for a Ray started here; with a Ray "
                                 "cluster (--ray-address or $RAY_ADDRESS) pass --gpus N")
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        if devices:
            kwargs["num_gpus"] = len(devices)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(_physical_ids(devices))   # Ray hands out these
        kwargs.update(init_kwargs)
        mark = uuid.uuid4().hex
        pipe = _start_reaper(mark)
        os.environ[ray_reaper.ENV] = mark                  # Ray's processes inherit it: the reaper finds them
        # The terminal's Ctrl-C goes to the whole process group: with SIGINT blocked (the mask is
        # inherited across exec) Ray's processes ignore it, and we stop them ourselves.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            ray.init(address="local", **kwargs)
        except BaseException:
            os.close(pipe)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.environ.pop(ray_reaper.ENV, None)
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    try:
        yield True
    finally:
        try:
            ray.shutdown()
        finally:
            if not address:
                os.close(pipe)                             # the reaper stops what shutdown left, and exits


_reapers: list[subprocess.Popen] = []


def _start_reaper(mark: str) -> int:
    """A watchdog (tasks/ray_reaper.py) that stops this Ray's processes once the write end of its
    pipe closes: at the end of the session, or when this process dies, `kill -9` included."""
    _reapers[:] = [r for r in _reapers if r.poll() is None]
    read_end, write_end = os.pipe()
    try:
        _reapers.append(subprocess.Popen([sys.executable, "-m", "tasks.ray_reaper", mark], stdin=read_end,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         cwd=Path(__file__).resolve().parent.parent, start_new_session=True))
    finally:
        os.close(read_end)
    return write_end                                       # not inherited by children: os.pipe fds never are


# -- the replica --------------------------------------------------------------------------------

def replica_device(device: str) -> str:
    return "cuda:0" if device.startswith("cuda") else device


class Replica:
    """One model on one GPU for the whole run (a Ray actor: `ray.remote(Replica)`)."""

    def __init__(self, index: int, request: InferRequest, run_id: str) -> None:
        self.index, self.run_id = index, run_id
        self.request = replace(request, device=replica_device(request.device))
        self.adapter = None
        self.info: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.prefetched: dict[str, Future] = {}

    def load(self, dataset: list[DatasetQuestion]) -> dict[str, Any]:
        import ray

        t0 = time.perf_counter()
        adapter = answering.make_adapter(self.request)
        answering.load_adapter(adapter, self.request)
        adapter.prepare(dataset)
        self.adapter = adapter
        self.info = {"index": self.index, "pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": self.request.device}
        return {**self.info, "load_seconds": round(time.perf_counter() - t0, 3),
                "volumes_per_call": answering.volumes_per_call(adapter)}

    def prefetch(self, mi: ModelInput) -> None:
        """Read the input of the volume this replica will probably answer next, while it answers this one."""
        # the last two: this call may overtake the answer call that takes the previous one; older
        # ones (a reservation another replica took) are dropped, not kept in memory
        self.prefetched[str(mi.path)] = self.pool.submit(answering.read_input, mi)
        while len(self.prefetched) > 2:
            self.prefetched.pop(next(iter(self.prefetched)))

    def answer(self, item: WorkItem) -> list[dict]:
        # this call and the next volume's prefetch may run in either order (two threads)
        mi = item.model_input
        ready = self.prefetched.pop(str(mi.path), None) if isinstance(mi, ModelInput) else None
        mi = ready.result() if ready is not None else answering.read_input(mi)
        return answering.answer_item(self.adapter, self.run_id, item, mi, self.request.batch_size,
                                      {"replica": self.info, "input_prefetched": ready is not None})

    def answer_group(self, items: list[WorkItem]) -> list[list[dict]]:
        """Several volumes decoded together (`answer_many` adapters read their inputs themselves, ahead)."""
        return answering.answer_group(self.adapter, self.run_id, items, [i.model_input for i in items],
                                       self.request.batch_size, {"replica": self.info})


# -- the scheduler ------------------------------------------------------------------------------

def _where(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid')} on {info.get('node')}, CUDA_VISIBLE_DEVICES={info.get('cuda_visible_devices')}"


def _cause(exc: BaseException) -> str:
    """One line out of Ray's multi-line errors: the original exception when there is one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    text = " ".join(str(exc).split())
    kind = re.search(r"Worker exit type: (\w+)", text)
    detail = re.search(r"Worker exit detail: (.*?\.)(?: |$)", text)
    if kind or detail:
        return ("its process ended" + (f" ({kind.group(1)})" if kind else "")
                + (f": {detail.group(1)}" if detail else ""))
    return text.split(". ")[0] or type(exc).__name__


def answer_sharded(request: InferRequest, items: Iterable[WorkItem], replicas: Sequence[str] | int,
                   address: str | None = None, *, run_id: str = "", dataset: Sequence[DatasetQuestion] = (),
                   init_kwargs: dict[str, Any] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """See the module docstring."""
    import ray
    from ray.exceptions import RayError

    devices = tuple(replicas) if not isinstance(replicas, int) else ()
    n = len(devices) if devices else int(replicas)
    todo = deque(items)
    with ray_session(address, devices, init_kwargs or {}):
        have = ray.cluster_resources().get("GPU", 0)
        if have < n:
            raise InferenceError(f"{n} replica(s) need {n} GPU(s) but the Ray cluster has {have:g}; pass fewer "
                                 f"--gpus/--devices (or declare logical GPUs with ${INIT_ENV}='{{\"num_gpus\": {n}}}' "
                                 "to test without any)")
        actor = ray.remote(Replica).options(num_gpus=1, num_cpus=1, max_concurrency=2, max_restarts=0,
                                            max_task_retries=0)
        handles = {i: actor.remote(i, request, run_id) for i in range(n)}
        try:
            shared = ray.put(list(dataset))
            loading = {i: h.load.remote(shared) for i, h in handles.items()}
            infos: dict[int, dict] = {}
            failed: dict[int, str] = {}
            for i, ref in loading.items():
                try:
                    infos[i] = ray.get(ref)
                except RayError as exc:
                    failed[i] = _cause(exc)
            for i, why in failed.items():
                log.warning("replica %d could not load %s: %s", i, request.model, why)
                ray.kill(handles.pop(i), no_restart=True)
            if not handles:
                raise AdapterError(f"no replica could load model {request.model!r}: {next(iter(failed.values()))}")
            log.info("%d replica(s) of %s: %s", len(handles), request.model,
                     "; ".join(f"{i}: {_where(infos[i])}, loaded in {infos[i]['load_seconds']} s" for i in infos))
            # an adapter that decodes several volumes together (answer_many) gets them in groups
            per_call = min(infos[i].get("volumes_per_call", 1) for i in infos)
            units = deque(list(todo)[k:k + per_call] for k in range(0, len(todo), per_call))
            yield from _schedule(handles, infos, units, run_id)
        finally:
            for h in handles.values():
                with contextlib.suppress(Exception):
                    ray.kill(h, no_restart=True)


def _schedule(handles: dict, infos: dict[int, dict], todo: deque, run_id: str) -> Iterator[tuple[str, list[dict]]]:
    """`todo` holds units (lists of WorkItems: one volume, or a group for `answer_many` adapters).
    One unit in flight per replica plus one reserved (a single volume's input prefetched); a free
    replica takes its reservation, else the next unit, else steals another replica's reservation."""
    import ray
    from ray.exceptions import RayActorError, RayError

    inflight: dict[Any, tuple[int, list[WorkItem]]] = {}
    reserved: dict[int, list[WorkItem]] = {}

    def take(i: int) -> list[WorkItem] | None:
        if i in reserved:
            return reserved.pop(i)
        if todo:
            return todo.popleft()
        return reserved.pop(next(iter(reserved))) if reserved else None

    def feed(i: int) -> None:
        unit = take(i)
        if unit is None:
            return
        call = handles[i].answer.remote(unit[0]) if len(unit) == 1 else handles[i].answer_group.remote(unit)
        inflight[call] = (i, unit)
        if todo:
            reserved[i] = todo.popleft()
            if len(reserved[i]) == 1 and isinstance(reserved[i][0].model_input, ModelInput):
                handles[i].prefetch.remote(reserved[i][0].model_input)

    for i in list(handles):
        feed(i)
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        i, unit = inflight.pop(ready[0])
        extra = {"replica": infos[i]}
        try:
            result = ray.get(ready[0])
            per_volume = [result] if len(unit) == 1 else result
        except RayActorError as exc:
            what = "this volume" if len(unit) == 1 else f"these {len(unit)} volumes"
            reason = f"replica {i} ({_where(infos[i])}) died while answering {what}: {_cause(exc)}"
            log.warning("%s; going on with %d replica(s)", reason, len(handles) - 1)
            per_volume = [answering.failed_rows(run_id, item, reason, extra) for item in unit]
            handles.pop(i)
            if i in reserved:
                todo.appendleft(reserved.pop(i))
        except RayError as exc:           # the replica's own code failed (an adapter's errors are rows already)
            per_volume = [answering.failed_rows(run_id, item, f"replica {i} failed: {_cause(exc)}", extra)
                          for item in unit]
        for item, rows in zip(unit, per_volume):
            yield item.volume, rows
        busy = {j for j, _ in inflight.values()}
        for j in [j for j in handles if j not in busy]:
            feed(j)
    left = sum(len(u) for u in todo) + sum(len(u) for u in reserved.values())
    if left:
        raise InferenceError(f"every replica died; {left} volume(s) were not answered (run the same command to "
                             "answer them)")
