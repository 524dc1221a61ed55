"""The simulations package's benchmark commands: ``fedmeta benchmark`` (few-shot quality, method
beside method) and the ``fedmeta bench`` group (inner loop, scaling, deployment), which print
ratios measured side by side in one run.

Each command imports its benchmark module only when it runs, so the rest of the package never
loads benchmark code or the ``bench`` extra's libraries (torchopt, scikit-learn, matplotlib).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from fedmeta.common import ADAPTATION_RECIPES, DATASETS, RUN_SETTINGS, elapsed_log, exit_on_errors, parse_shots

__all__ = ["bench_app", "benchmark", "tune"]

bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True,
                        add_completion=False)


def _write_json(result: dict, path: Path | None, console: Console) -> None:
    if path is not None:
        path.write_text(json.dumps(result, indent=2))
        console.print(f"results written to {path}")


@bench_app.command("inner-loop")
def bench_inner_loop(
    device: Annotated[
        str, typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="Where to run.")
    ] = "auto",
    repeats: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Timed meta-steps per variant, interleaved round-robin (default: as many as fit "
            "in a per-model time budget, keeping the command under 90 s on 2 CPU cores).",
            show_default=False,
        ),
    ] = None,
    models: Annotated[str, typer.Option(help="Comma-separated models to benchmark.")] = "mlp,cnn1d",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Time one meta-step of every algorithm against a hand-written loop, torchopt and vmap."""
    # Imported here so that the package never loads benchmark code (or torchopt) otherwise.
    from fedmeta.simulations.benchmarks import inner_loop

    console = _wide_console()
    with exit_on_errors(console, ValueError, inner_loop.GradientMismatchError):
        result = inner_loop.run_inner_loop_benchmark(
            device=inner_loop.bench_device(device),
            models=[m.strip() for m in models.split(",") if m.strip()],
            repeats=repeats,
            log=elapsed_log(console),
        )
    inner_loop.render(result, console)
    _write_json(result.to_dict(), json_path, console)


def _sizes(text: str) -> list[int]:
    """``"10,100,1000"`` -> ``[10, 100, 1000]``; ValueError names the bad part."""
    parts = [part.strip().replace("_", "") for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--factories must be comma-separated positive integers, got {text!r}")
    return [int(part) for part in parts]


@bench_app.command("scaling")
def bench_scaling(
    factories: Annotated[str, typer.Option(help="Comma-separated federation sizes (factories).")] = "10,100,1000",
    rounds: Annotated[int, typer.Option(min=1, help="Timed rounds per size, after one warm-up round.")] = 5,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Simulated nodes per size, each serving an equal block of factories (default: one per Ray "
            "actor; as many as factories gives Flower's usual one node per factory).",
            show_default=False,
        ),
    ] = None,
    client_cpus: Annotated[
        float, typer.Option(min=0.01, help="CPUs per Ray actor: the simulation runs CPUs / this actors.")
    ] = 1.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Round time and peak memory on Flower's simulation engine beside a plain loop, per federation size."""
    from fedmeta.simulations.benchmarks import scaling  # imports torch and the apps: only when benchmarking

    console = _wide_console()
    with exit_on_errors(console, ValueError):
        result = scaling.run_scaling_benchmark(
            _sizes(factories),
            rounds=rounds,
            nodes=nodes,
            client_cpus=client_cpus,
            log=elapsed_log(console),
        )
    scaling.render(result, console)
    _write_json(result.to_dict(), json_path, console)


def benchmark(
    dataset: Annotated[
        str, typer.Option(click_type=click.Choice(list(DATASETS)),
                          help="Data set (cwru-fe: the held-out load read by the fan-end sensor).")
    ] = "synthetic",
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run: 1 seed, few rounds and tasks.")] = False,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Seeds 0..N-1 (default 3; 1 with --quick).", show_default=False)
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Federated rounds (default 20; 5 with --quick).", show_default=False)
    ] = None,
    recipe: Annotated[
        str, typer.Option(click_type=click.Choice(list(ADAPTATION_RECIPES)), help=RUN_SETTINGS["eval-recipe"].help)
    ] = "fixed",
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods to run (default: all; e.g. maml,xgb-bagging,"
                                 "xgb-cyclic,trees-alone,gradient-boosting).", show_default=False)
    ] = None,
    shots: Annotated[
        str | None, typer.Option(help="Comma-separated K values (default: the data set's).", show_default=False)
    ] = None,
    tuned: Annotated[
        str, typer.Option(help="Tuned hyper-parameters: auto (the committed file of the data set where there is "
                          "one, see `fedmeta tune`), none (the shared defaults) or a file.")
    ] = "auto",
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for results.json and results.md (default runs/benchmark-<dataset>-<time>); "
                     "each finished seed is kept in its seeds/, so the same command with the same --out "
                     "resumes a stopped run.",
                     show_default=False),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Run each seed as a task (one CPU) on the Ray cluster whose head node is at HOST:PORT; "
                     "every node needs the project and the data sets at the same paths. Without it the "
                     "benchmark runs in this process, whatever RAY_ADDRESS says.", show_default=False),
    ] = None,
) -> None:
    """Few-shot quality of local-only, FedAvg(+FT), federated MAML/FOMAML/Reptile/Meta-SGD, centralized MAML,
    federated XGBoost trees (bagging, cyclic) and trees on the K rows alone, pooled tree models and full-data
    oracles on the held-out factories, per K; mean and std over seeds."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # Imports torch, scikit-learn and the data sets: only when benchmarking.
    from fedmeta.simulations.benchmarks import fewshot, fewshot_report, tuning
    from fedmeta.simulations.benchmarks.seed_records import SeedRecordError, SeedRecords
    from fedmeta.simulations.harness import RayClusterError

    console = _wide_console()
    out = out if out is not None else Path("runs") / f"benchmark-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    with exit_on_errors(console, ValueError, FileNotFoundError, FileExistsError, fewshot.BenchmarkError,
                        SeedRecordError, RayClusterError):
        fewshot_report.check_out_dir(out)
        tuned_file = _tuned_file(tuned, dataset, tuning.tuned_path(dataset))
        plan = fewshot.plan_for(
            dataset, quick=quick, seeds=seeds, rounds=rounds, recipe=recipe,
            methods=_names(methods, "--methods"), shots=None if shots is None else parse_shots(shots, "--shots"),
            tuned=tuning.load_tuned(tuned_file) if tuned_file else None,
            tuned_from=f"simulations/benchmarks/tuned/{tuning.tuned_path(dataset).name} (committed)"
            if tuned_file == tuning.tuned_path(dataset) else str(tuned_file or ""),
        )
        records = SeedRecords(out, plan)
        console.print(f"each finished seed is recorded in {records.folder}; the same command with --out {out} "
                      "resumes a stopped run")
        with Progress(TextColumn("[bold]benchmark[/bold] " + dataset), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("steps", total=None)
            results = fewshot.run_benchmark(
                plan, progress=lambda done, total: bar.update(task, completed=done, total=total),
                records=records, ray_address=ray_address,
            )
        fewshot_report.write_results(results, out)
    fewshot_report.render(results, console)
    console.print(f"results written to {out} ({', '.join(fewshot_report.RESULTS_FILES)})")


def _wide_console() -> Console:
    """The terminal's console; in a file or a pipe one wide enough that no table is cut."""
    return Console() if Console().is_terminal else Console(width=160)


def _comma_separated(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _names(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    names = _comma_separated(value)
    if not names:
        raise ValueError(f"{flag} names no method")
    return names


def _tuned_file(choice: str, dataset: str, committed: Path) -> Path | None:
    """``--tuned``: auto (the committed file where it exists), none, or a path that must exist."""
    if choice == "none":
        return None
    if choice == "auto":
        return committed if committed.is_file() else None
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"--tuned {choice}: no such file")
    return path


def tune(
    dataset: Annotated[str, typer.Option(click_type=click.Choice(list(DATASETS)), help="Data set.")] = "synthetic",
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods to tune (default: every tunable one).",
                                 show_default=False)
    ] = None,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials per method (the same budget for each).")] = 30,
    quick: Annotated[bool, typer.Option("--quick", help="The benchmark's tiny plan (few rounds and tasks).")] = False,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Federated rounds (default: the benchmark's).", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Configuration file to add the methods to (default: runs/tune-<dataset>.json; "
                                  "commit it as the data set's file for `fedmeta benchmark --tuned auto`).",
                                  show_default=False)
    ] = None,
) -> None:
    """Search every method's hyper-parameters on the training side's validation factory (never a held-out
    factory or a test split), the same number of trials each; write the chosen values and the search log.
    Run the same command again to resume a stopped search (its trials are kept in OUT.journal)."""
    from fedmeta.simulations.benchmarks import fewshot, tuning  # imports torch and optuna: only when tuning

    console = _wide_console()
    out = out if out is not None else Path("runs") / f"tune-{dataset}.json"
    with exit_on_errors(console, ValueError, FileNotFoundError, fewshot.BenchmarkError):
        plan = fewshot.plan_for(dataset, quick=quick, seeds=1, rounds=rounds)
        chosen = _names(methods, "--methods") or list(tuning.TUNABLE_METHODS)
        data = tuning.tune(plan, chosen, trials, out, log=elapsed_log(console))
    for method in chosen:
        entry = data["methods"][method]
        console.print(f"{method}: best {entry['objective']['metric']} {entry['value']:.4f} with {entry['best']} "
                      f"({entry['seconds']:.0f} s)", highlight=False)
    console.print(f"tuned configuration written to {out}")


@bench_app.command("deployment")
def bench_deployment(
    factories: Annotated[int, typer.Option(min=2, help="Factories (each a SuperNode in the deployments).")] = 3,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds; the first is not timed.")] = 4,
    isolation: Annotated[
        list[str] | None,
        typer.Option(help="Deployment isolation modes to run (repeat; default: subprocess and process).",
                     show_default=False),
    ] = None,
    supernode: Annotated[
        list[str] | None,
        typer.Option(help="SuperNode timings to run each deployment with (repeat): stock (Flower's), tuned (the "
                     "project's); default: both.", show_default=False),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Round time of the same federation on the simulation engine and as real processes (TLS, node auth)."""
    from fedmeta.simulations.benchmarks import deployment  # imports torch and Ray: only when benchmarking

    console = _wide_console()
    with exit_on_errors(console, ValueError, RuntimeError):
        result = deployment.run_deployment_benchmark(
            factories,
            rounds,
            isolations=isolation or deployment.ISOLATIONS,
            supernodes=supernode or deployment.SUPERNODES,
            log=elapsed_log(console),
        )
    deployment.render(result, console)
    _write_json(result.to_dict(), json_path, console)


@bench_app.command("soak")
def bench_soak(
    factories: Annotated[int, typer.Option(min=6, help="Factories, each a `fedmeta client` (process isolation).")] = 6,
    rounds: Annotated[int, typer.Option(min=12, help="Rounds of the run.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule (which fault when, on which factory) and "
                                      "of the factories' tables.")] = 0,
    round_timeout: Annotated[float, typer.Option(min=21.0, help="Seconds a round waits for replies at most.")] = 30.0,
    keep: Annotated[Path | None, typer.Option(help="Run in this folder and keep it (logs, run, states); default: "
                                              "a temporary folder.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """A federation of real processes through seeded faults: factories killed while training and while
    uploading, the server killed and resumed, a factory frozen, a slow and lossy link (needs root)."""
    from fedmeta.simulations.benchmarks import soak  # imports torch: only when benchmarking

    console = _wide_console()
    if keep is not None and keep.exists() and any(keep.iterdir()):
        console.print(f"[red]error:[/red] --keep {keep} is not empty: the soak writes a new run there")
        raise typer.Exit(1)
    with exit_on_errors(console, ValueError, RuntimeError):
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        result = soak.run_soak(factories, rounds, seed=seed, round_timeout=round_timeout, folder=keep,
                               log=elapsed_log(console))
    soak.render(result, console)
    _write_json(result.to_dict(), json_path, console)
    if not result.passed:
        raise typer.Exit(1)


@bench_app.command("robustness")
def bench_robustness(
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds of every run.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the factories, the model and the attacks.")] = 0,
    rules: Annotated[str, typer.Option(help="Aggregation rules, comma-separated (default: all).")] = "",
    attacks: Annotated[str, typer.Option(help="Attacks, comma-separated (default: all).")] = "",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Every aggregation rule on a clean federation and under each attack by 2 of 10 factories."""
    from fedmeta.server.strategy.aggregation import AGGREGATIONS
    from fedmeta.simulations.attacks import ATTACKS, DATA_ATTACKS
    from fedmeta.simulations.benchmarks import defences

    console = _wide_console()
    with exit_on_errors(console, ValueError):
        chosen_rules = _choices(rules, AGGREGATIONS, "--rules")
        chosen_attacks = _choices(attacks, (*ATTACKS, *DATA_ATTACKS), "--attacks")
    result = defences.run_robustness(rounds, seed, chosen_rules, chosen_attacks, elapsed_log(console))
    defences.render_robustness(result, console)
    _write_json(result.to_dict(), json_path, console)


@bench_app.command("compression")
def bench_compression(
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds of every run.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the factories and the model.")] = 0,
    topk_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Top-k's share of each tensor.")] = 0.1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Each delta encoding: bytes a reply on the wire and the held-out quality it trains to."""
    from fedmeta.simulations.benchmarks import defences

    console = _wide_console()
    result = defences.run_compression(rounds, seed, topk_fraction, elapsed_log(console))
    defences.render_compression(result, console)
    _write_json(result.to_dict(), json_path, console)


@bench_app.command("secagg")
def bench_secagg(
    factories: Annotated[str, typer.Option(help="Federation sizes, comma-separated.")] = "10,100",
    parameters: Annotated[int, typer.Option(min=1, help="Values in a delta (the quality MLP: 4,737).")] = 4737,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds timed per size; the medians are shown.")] = 3,
    protocol: Annotated[str, typer.Option(click_type=click.Choice(["pairwise", "plus", "both"]),
                                          help="pairwise: every factory with every other (beside the plain mean); "
                                               "plus: SecAgg+'s sparse graph.")] = "both",
    dropout: Annotated[float, typer.Option(min=0.0, max=0.44, help="SecAgg+: the share of the factories that "
                                           "leave after their shares (and the graph's assumed dropout).")] = 0.1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """A round's secure aggregation (every party in this process) beside the plain weighted mean, and SecAgg+'s
    round, server and factory costs with factories dropping out."""
    from fedmeta.simulations.benchmarks import defences

    console = _wide_console()
    protocols = defences.PROTOCOLS if protocol == "both" else (protocol,)
    result = defences.run_secure_aggregation_cost(_sizes(factories), parameters, repeats, elapsed_log(console),
                                                  protocols, dropout)
    defences.render_secure_aggregation_cost(result, console)
    _write_json(result.to_dict(), json_path, console)


@bench_app.command("privacy")
def bench_privacy(
    dataset: Annotated[
        str | None,
        typer.Option(click_type=click.Choice(DATASETS), help="Data set (default: cmapss; synthetic with --factories).",
                     show_default=False),
    ] = None,
    factories: Annotated[
        str | None,
        typer.Option(help="Comma-separated numbers of training factories of the synthetic family, e.g. "
                     "10,100,1000 (default: the data set's own).", show_default=False),
    ] = None,
    sampling_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Each factory's chance to train in a round (Poisson sampling).")
    ] = 1.0,
    epsilons: Annotated[str, typer.Option(help="Target epsilons at delta 1e-5, comma-separated.")] = "1,4,8",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds of every run.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the factories, the model and the sampling.")] = 0,
    algorithm: Annotated[str, typer.Option(help="Federated algorithm.")] = "fomaml",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Held-out quality under client-level differential privacy at each target epsilon, beside no DP, per
    federation size."""
    from fedmeta.simulations.benchmarks import privacy

    console = _wide_console()
    with exit_on_errors(console, ValueError):
        targets = [float(value) for value in _comma_separated(epsilons)]
        if not targets or min(targets) <= 0:
            raise ValueError(f"--epsilons must be numbers > 0, got {epsilons!r}")
        sizes = None if factories is None else _sizes(factories)
        chosen = dataset or ("cmapss" if sizes is None else "synthetic")
        result = privacy.run_privacy(chosen, targets, rounds, seed, algorithm, elapsed_log(console), factories=sizes,
                                     sampling_rate=sampling_rate)
    privacy.render_privacy(result, console)
    _write_json(result.to_dict(), json_path, console)


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    """Comma-separated names from ``allowed`` (empty: all of them); a ``ValueError`` names an unknown one."""
    names = _comma_separated(text) or list(allowed)
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    return names


@bench_app.command("predict")
def bench_predict(
    rows: Annotated[int, typer.Option(min=1000, help="Rows of the 6-feature production table.")] = 1_000_000,
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each, alternating; the medians are compared.")] = 3,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """`fedmeta predict` beside reading the same CSV with pandas alone: time ratio and peak memory."""
    from fedmeta.simulations.benchmarks import predict  # imports torch and pyarrow: only when benchmarking

    console = _wide_console()
    result = predict.run_predict_benchmark(rows, repeats, elapsed_log(console))
    predict.render(result, console)
    _write_json(result.to_dict(), json_path, console)


def _transfer_pair(text: str) -> tuple[str, str]:
    source, colon, target = text.partition(":")
    if not colon or not source or not target:
        raise ValueError(f"--transfers takes SOURCE:TARGET pairs such as FD001:FD003, got {text!r}")
    return source, target


@bench_app.command("references")
def bench_references(
    subsets: Annotated[str, typer.Option(help="Comma-separated C-MAPSS subsets.")] = "FD003,FD004",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 (validation engines and initialisation).")] = 3,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most epochs per model (early stopping ends sooner).")] = 100,
    transfers: Annotated[
        str, typer.Option(help="Comma-separated SOURCE:TARGET pairs (e.g. FD001:FD003,FD002:FD004): the reference "
                          "network and LightGBM trained on the source, scored on the target before any target label.")
    ] = "",
    ai4i: Annotated[
        bool, typer.Option("--ai4i", help="Also AI4I: the network and the tree models trained on every row of L and "
                           "M, AUROC on all of H, per failure mode.")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Full-data neural references trained centrally as the literature does (C-MAPSS test RMSE per subset,
    AI4I AUROC on H), and how far they carry to another subset's fault mode beside a tree model."""
    from fedmeta.simulations.benchmarks import references  # reads the data sets: only when benchmarking
    from fedmeta.simulations.benchmarks.ai4i_reference import render_ai4i, run_ai4i_references
    from fedmeta.simulations.benchmarks.supervised import SupervisedRecipe

    console = _wide_console()
    recipe = SupervisedRecipe(max_epochs=max_epochs)
    named, pairs = _comma_separated(subsets.upper()), _comma_separated(transfers.upper())
    result: dict[str, object] = {}
    with exit_on_errors(console, ValueError, FileNotFoundError):
        if named or pairs or not ai4i:
            result = references.run_reference_benchmark(
                named, seeds, recipe, log=elapsed_log(console), transfers=[_transfer_pair(pair) for pair in pairs],
            )
        if ai4i:
            result["ai4i"] = run_ai4i_references(seeds, recipe, log=elapsed_log(console))
    if "runs" in result:
        references.render(result, console)
    if ai4i:
        render_ai4i(result["ai4i"], console)
    _write_json(result, json_path, console)
