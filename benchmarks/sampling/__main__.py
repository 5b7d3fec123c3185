"""`python -m benchmarks.sampling`: see the package's docstring."""

import math
import warnings

from benchmarks import common
from experiments import cli

common.use_backend(__name__, "jax", "runs on the JAX backend")

import keras
import tensorflow as tf

import benchmarks.sampling
from benchmarks.langevin.toy2d import run_toy2d
from benchmarks.sampling.runs import (
    QUICK_SAMPLES,
    QUICK_SETTINGS,
    QUICK_TEMPERATURES,
    SAMPLES,
    SETTING_HELP,
    SETTINGS,
    SETUPS,
    TEMPERATURES,
    TUNING_SEED,
    Context,
)
from benchmarks.sampling.tables import (
    evaluate_dataset,
    reliability_plot,
    run_posterior_tables,
    run_signatures_table,
    setting_list,
    tune,
    write_lr_table,
)

TABLES = ("lr", "posterior", "significance", "signatures", "toy2d")


def build_parser():
    p = common.parser(
        benchmarks.sampling.__doc__.split("\n\n")[0],
        TABLES,
        "results/benchmarks/sampling",
    )
    p.add_argument("--datasets", default="digits,mnist1d")
    p.add_argument(
        "--settings",
        default=None,
        help=f"chain settings among {', '.join(SETTINGS)} (default all; quick: warm,scratch). "
        + SETTING_HELP,
    )
    p.add_argument(
        "--temperatures",
        default=None,
        help="comma-separated temperatures in units of 1/N (default 1,0.1,0.01; quick: 1)",
    )
    p.add_argument(
        "--samples",
        type=cli.positive_int,
        default=None,
        help=f"K, snapshots per chain and ensemble members (default {SAMPLES}; quick {QUICK_SAMPLES})",
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=None,
        help="SGD epochs E (default per data set)",
    )
    p.add_argument(
        "--chain-epochs",
        type=cli.positive_int,
        default=None,
        help="chain epochs C of a warm chain, burn-in included (default per data set)",
    )
    p.add_argument(
        "--burn-in",
        type=cli.positive_int,
        default=None,
        help="burn-in epochs B of a warm chain (default per data set)",
    )
    p.add_argument(
        "--chain-lr",
        type=cli.positive_float,
        default=None,
        help="the chains' learning rate (default: chosen by the lr table)",
    )
    p.add_argument(
        "--toy-chains",
        type=cli.positive_int,
        default=None,
        help="chains of the 2-D check (default 2000)",
    )
    return p


# -- main ------------------------------------------------------------------------------------
def _parse_list(text, allowed, flag):
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise cli.UserError(
            f"Argument `{flag}` must name items among {tuple(allowed)}. Received: {text!r}"
        )
    return items


def _parse_temperatures(text, quick):
    if text is None:
        return QUICK_TEMPERATURES if quick else TEMPERATURES
    try:
        temps = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        temps = ()
    if not temps or not all(math.isfinite(t) and t > 0 for t in temps):
        raise cli.UserError(
            f"Argument `--temperatures` must be positive numbers (units of 1/N). Received: {text!r}"
        )
    return tuple(sorted(temps, reverse=True))


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    warnings.filterwarnings("ignore", message=".*PyDataset.*")
    datasets = _parse_list(args.datasets, SETUPS, "--datasets")
    settings = _parse_list(
        args.settings or ",".join(QUICK_SETTINGS if args.quick else SETTINGS),
        SETTINGS,
        "--settings",
    )
    temps = _parse_temperatures(args.temperatures, args.quick)
    if args.quick:
        args.seed_list = args.seed_list[:1]
    if TUNING_SEED in args.seed_list:
        raise cli.UserError(
            f"Argument `--seeds` must not include the tuning seed {TUNING_SEED}. Received: {args.seeds!r}"
        )
    common.log(
        f"sampling: tables {args.table_list}, data sets {datasets}, settings {settings}, temperatures "
        f"{[f'{t:g}/N' for t in temps]}, seeds {args.seed_list}, backend {keras.backend.backend()}"
    )
    outputs = []
    nn_tables = {"lr", "posterior", "significance", "signatures"} & set(
        args.table_list
    )
    if nn_tables:
        store = common.ResultStore(args.output_dir, "runs")
        contexts, lr_rows, settings_of, all_results, width = [], [], {}, {}, 0
        for dataset in datasets:
            ctx = Context(args, dataset)
            contexts.append(ctx)
            common.log(
                f"{ctx.describe()}; E = {ctx.epochs}, C = {ctx.chain}, B = {ctx.burn_in}, K = {ctx.samples}, "
                f"thin {ctx.thin}"
            )
            trainers = {}
            sgd_lr, chain_lr, slow_lr, rows, width = tune(
                args, ctx, store, trainers, temps
            )
            ctx.sgd_lr = sgd_lr
            lr_rows.append(rows)
            settings_of[dataset] = setting_list(settings, chain_lr, slow_lr)
            common.log(
                f"{dataset}: SGD lr {sgd_lr:g}, chain lr {chain_lr:g} (warm_slow: {slow_lr:g})"
            )
            if nn_tables - {"lr"}:
                all_results[dataset] = evaluate_dataset(
                    args,
                    ctx,
                    store,
                    trainers,
                    sgd_lr,
                    temps,
                    settings_of[dataset],
                )
                first = settings_of[dataset][0]
                reliability_plot(
                    args,
                    ctx,
                    all_results[dataset],
                    temps,
                    args.seed_list[0],
                    first[0],
                )
        if "lr" in args.table_list:
            outputs.append(write_lr_table(args, lr_rows, width))
        if {"posterior", "significance"} & set(args.table_list):
            outputs.extend(
                run_posterior_tables(
                    args, contexts, all_results, temps, settings_of
                )
            )
        if "signatures" in args.table_list:
            outputs.append(
                run_signatures_table(
                    args, contexts, all_results, temps, settings_of
                )
            )
    if "toy2d" in args.table_list:
        outputs.append(run_toy2d(args))
    return outputs


if __name__ == "__main__":
    common.run_benchmark(main)
