"""Commands about models: infer, models, env."""

from __future__ import annotations

import argparse
import sys

from flows.cli.render import print_json, progress_bars
from flows.server import ensure_server


def _options(pairs: list[str] | None) -> dict:
    import json

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)           # numbers, booleans, lists; anything else stays text
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    from tasks.answering import one_adapter_per_request

    with one_adapter_per_request():        # one adapter for the checks here, the plan and the run
        return _infer(args)


def _infer(args: argparse.Namespace) -> int:
    from tasks.answering import AdapterError
    from tasks.inference import InferenceError, InferRequest, plan_run, replan

    from tasks.model_catalog import lab_settings

    cfg = lab_settings(args.model, args.models_config)      # the lab's paths; flags win
    shard = {}
    if args.devices is not None or args.gpus is not None or args.ray_address:
        from tasks.sharding import sharding_from

        sharding = sharding_from(args.devices, args.gpus, args.ray_address)     # refused here, before Prefect
        shard = dict(devices=list(sharding.replicas) if isinstance(sharding.replicas, tuple) else None,
                     gpus=sharding.replicas if isinstance(sharding.replicas, int) else None,
                     ray_address=args.ray_address)
    device = args.device or cfg.get("device") or ("cuda" if shard else "cpu")
    params = dict(model=args.model, checkpoint=args.checkpoint or cfg.get("checkpoint"), name=args.name,
                  dataset=args.dataset, device=device, dtype=args.dtype or cfg.get("dtype"), batch_size=args.batch_size,
                  limit_volumes=args.limit_volumes, seed=args.seed,
                  options={**(cfg.get("options") or {}), **_options(args.option)}, ablate=args.ablate,
                  retry_failed=args.retry_failed, code_dir=args.code_dir or cfg.get("code_dir"),
                  env=args.env or cfg.get("env"), wait=args.wait)
    try:
        plan = plan_run(args.db, InferRequest(**params), device_here=not shard)   # a bad model, dataset or name
        #                                                                            fails before Prefect starts
    except (AdapterError, InferenceError) as exc:
        print(f"ctsvqa: error: {exc}", file=sys.stderr)
        return 2
    if not plan.pending:
        print(f"run {plan.name} ({plan.run_id}) on {plan.dataset_id} has every prediction stored; nothing to do "
              f"(--retry-failed answers its failures again)")
        return 0
    from flows.server import start_temporary_server_ignoring_ctrl_c
    from tasks import interrupt
    from tasks.inference import run_lease
    from warehouse import leases

    # Held from here to the end, so a second session of the same run is refused before Prefect starts;
    # the flow's task takes the same lease again (re-entrant in this process).
    with leases.held(args.db, [run_lease(plan)], f"run {plan.name} ({plan.run_id}) on {plan.dataset_id}",
                     wait=args.wait, on_wait=lambda h: print(f"ctsvqa: waiting for {h.describe()}, which holds run "
                                                            f"{plan.name}", file=sys.stderr)):
        if args.wait and not (plan := replan(args.db, plan, InferRequest(**params))).pending:
            print(f"run {plan.name} ({plan.run_id}) on {plan.dataset_id}: the session waited for answered "
                  f"everything; nothing to do")
            return 0
        ensure_server(args.db)
        import flows.infer as infer_flow

        with progress_bars() as progress:
            bar = progress.add_task(plan.name, total=plan.n_pending)
            infer_flow.progress_hook = lambda _, done, total: progress.update(bar, completed=done, total=total)
            start_temporary_server_ignoring_ctrl_c()
            try:
                with interrupt.ctrl_c("starting no new volume; storing what is answered (Ctrl-C again: exit now)"):
                    state = infer_flow.infer(**params, **shard, db=args.db, plan=plan.ref(), return_state=True)
            finally:
                infer_flow.progress_hook = None
    if not state.is_completed():
        print(f"ctsvqa: error: {state.message}", file=sys.stderr)
        return 1
    row = state.result()
    if row["interrupted"]:
        print(f"ctsvqa: interrupted: {row['ok'] + row['error']} answered, {row['left']} left; run the same command "
              f"to continue", file=sys.stderr)
        return 130
    print(f"run {row['run']} ({row['run_id']}) on {row['dataset']}: {row['ok']} answered, {row['error']} failed "
          f"of {row['pending']} in {row['seconds']} s" + (f"; errors: {row['errors']}" if row["errors"] else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tasks.model_catalog import describe_models

    infos = describe_models(args.checkpoint, args.code_dir, args.models_config, args.model)
    if args.json:
        print_json([{**{k: v for k, v in vars(i).items()}, "ready": i.ready} for i in infos])
        return 0
    for info in infos:
        state = "ready" if info.ready else ("not importable" if not info.importable else "missing requirements")
        print(f"{info.name:<16} recipe {info.recipe or '-':<26} {state:<20} {info.origin}: {info.target}")
        if info.description:
            print(f"    {info.description}")
        for r in info.requirements or []:
            print(f"    [{'found' if r.found else 'MISSING'}] {r.what}: {r.detail}")
        if info.error:
            print(f"    error: {info.error}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from tasks import model_catalog as envs

    try:
        if args.env_command == "create":
            st, seconds = envs.create_env(args.family, args.python, args.torch,
                                          log=lambda line: print(line, file=sys.stderr, flush=True))
            print(f"{st.family}: ready at {st.path} (Python {st.python_version}, "
                  + ", ".join(f"{k} {v}" for k, v in st.packages.items()) + f") in {seconds:.0f} s")
            return 0
        listed = envs.list_envs()
        if args.json:
            print_json([{"family": st.family, "path": st.path, "ready": st.ready, "reason": st.reason,
                          "python": st.python_version, "packages": st.packages, "fingerprint": st.fingerprint}
                         for st in listed])
            return 0
        print(f"family environments in {envs.envs_root()} ($CTSVQA_ENVS):")
        for st in listed:
            state = "ready" if st.ready else f"NOT READY ({st.reason})"
            print(f"{st.family:<10} {state}  {st.path}")
            if st.ready:
                print(f"    Python {st.python_version}; " + ", ".join(f"{k} {v}" for k, v in st.packages.items())
                      + f"; fingerprint {st.fingerprint[:12]}")
        return 0
    except envs.EnvError as exc:
        print(f"ctsvqa: error: {exc}", file=sys.stderr)
        return 2
