"""The lr, posterior, significance and signatures tables of `benchmarks.sampling`."""

import math
import os

from benchmarks import common

common.use_backend(__name__, "jax", "runs on the JAX backend")

import numpy as np
from scipy import stats

from benchmarks.sampling.runs import (
    CHAIN_LR_GRID,
    METHOD_LABELS,
    NOISY,
    QUICK_CHAIN_LR_GRID,
    QUICK_SGD_LR_GRID,
    SGD_LR_GRID,
    TUNING_SEED,
    chain_label,
    chain_record,
    ensemble_run,
    run_chain,
    sampling_loss,
    sgd_run,
    stability,
)
from keras_qsgld import calibration


# -- the lr table ---------------------------------------------------------------------------
def tune(args, ctx, store, trainers, temps):
    """SGD's rate (lowest final train loss) and the chains' rate (largest stable everywhere),
    on the tuning seed; rows of the lr table."""
    sgd_grid = QUICK_SGD_LR_GRID if args.quick else SGD_LR_GRID
    chain_grid = QUICK_CHAIN_LR_GRID if args.quick else CHAIN_LR_GRID
    losses, solutions = {}, {}
    for lr in sgd_grid:
        rec, weights = sgd_run(
            args, ctx, store, trainers, lr, TUNING_SEED, "lr"
        )
        losses[lr] = (
            rec["train_loss"]
            if rec["finite"] and math.isfinite(rec["train_loss"])
            else math.inf
        )
        solutions[lr] = weights
    sgd_lr = min(sgd_grid, key=lambda lr: losses[lr])
    rows = [
        [
            ctx.dataset,
            "SGD training (lowest final train loss)",
            f"{ctx.epochs} epochs",
        ]
        + [f"{lr:g}: {common.fmt(losses[lr])}" for lr in sgd_grid]
        + [""] * (len(chain_grid) - len(sgd_grid))
        + [f"{sgd_lr:g}"]
    ]
    stable_everywhere = set(chain_grid)
    for method, t in [("dithered", t) for t in temps] + [("none", 0.0)]:
        cells, stable = [], []
        for lr in chain_grid:
            key = store.make_key(
                d=ctx.dataset,
                run="tune",
                m=method,
                T=t,
                lr=lr,
                sgd_lr=sgd_lr,
                C=ctx.chain,
                E=ctx.epochs,
                quick=args.quick,
            )
            rec = store.get(key, force=args.force and "lr" in args.table_list)
            if rec is None:
                chain = run_chain(
                    ctx,
                    method,
                    lr,
                    t,
                    solutions[sgd_lr],
                    TUNING_SEED,
                    TUNING_SEED,
                    ctx.chain,
                    ctx.burn_in,
                )
                rec, _ = chain_record(ctx, chain, lr, t)
                rec = store.put(key, rec)
                common.log(
                    f"lr: {ctx.dataset} {chain_label(method, t)} lr {lr:g}: sampling-phase loss "
                    f"{common.fmt(sampling_loss(ctx, rec))}, max epoch loss {common.fmt(max(rec['loss_curve']))} "
                    f"(from {common.fmt(rec.get('start_train_loss'))}), "
                    f"{'stable' if stability(rec) else 'UNSTABLE'}, {rec['seconds']:.1f} s"
                )
            ok = stability(rec)
            if ok:
                stable.append(lr)
            cells.append(
                f"{lr:g}: {common.fmt(sampling_loss(ctx, rec))}, max {common.fmt(max(rec['loss_curve']))}"
                + ("" if ok else " (unstable)")
            )
        stable_everywhere &= set(stable)
        rows.append(
            [
                ctx.dataset,
                f"chain: {chain_label(method, t)}",
                f"{ctx.chain} epochs from SGD",
            ]
            + cells
            + [f"{max(stable):g}" if stable else "none stable"]
        )
    if args.chain_lr is not None:
        chain_lr, why = args.chain_lr, "--chain-lr"
    elif stable_everywhere:
        chain_lr, why = (
            max(stable_everywhere),
            "largest stable at every temperature and without noise",
        )
    else:
        chain_lr, why = min(chain_grid), "none stable everywhere: the smallest"
    smaller = [lr for lr in chain_grid if lr < chain_lr]
    slow_lr = max(smaller) if smaller else chain_lr / 3.0
    rows.append(
        [ctx.dataset, "chains of the evaluation", why]
        + [""] * len(chain_grid)
        + [f"{chain_lr:g}"]
    )
    rows.append(
        [
            ctx.dataset,
            "chains of the evaluation, warm_slow",
            "the next smaller rate",
        ]
        + [""] * len(chain_grid)
        + [f"{slow_lr:g}"]
    )
    return sgd_lr, chain_lr, slow_lr, rows, len(chain_grid)


def write_lr_table(args, rows_by_dataset, width):
    rows = [r for rows in rows_by_dataset for r in rows]
    headers = (
        ["data set", "run", "length"]
        + [f"lr {i + 1}: train loss" for i in range(width)]
        + ["chosen lr"]
    )
    notes = [
        f"Tuning seed {TUNING_SEED} (not an evaluation seed); no test data is used. SGD: the NLL of the final "
        "weights on the whole training set (no prior term); the lowest is kept.",
        "Chains start from the tuning seed's SGD solution at SGD's chosen rate. Cells: the mean training loss "
        "over the sampling phase (the epochs after the burn-in; running minibatch means, as fit reports them) "
        "and the largest epoch mean. Unstable: a non-finite loss, or any epoch (or the final weights) at or "
        "above ln(10), a uniform guess's loss: the chain lost what training found, even where it recovers later.",
        "The evaluation's chains run at the largest rate stable at every temperature and without noise (so that "
        "they move as far as they can in the budget), and, as the setting warm_slow, at the next smaller rate "
        "of the grid. A stable chain may still be a biased sampler at a large rate (discretization, and "
        "minibatch gradient noise, whose variance grows as lr^2 against the injected 2 lr T).",
    ]
    return common.write_table(
        args,
        "lr",
        "Learning rates: SGD's, and where each temperature's chain is stable",
        headers,
        rows,
        notes,
    )


# -- the evaluation ---------------------------------------------------------------------------
def chain_methods(temps):
    return [("none", 0.0)] + [(m, t) for t in temps for m in NOISY]


def setting_list(settings, chain_lr, slow_lr):
    """[(label, start, lr)] of the chain settings asked for."""
    out = []
    for name in settings:
        lr = slow_lr if name == "warm_slow" else chain_lr
        start = "scratch" if name == "scratch" else "warm"
        out.append((f"{start}, lr {lr:g}", start, lr))
    return out


def evaluate_dataset(args, ctx, store, trainers, sgd_lr, temps, settings):
    """{(setting, method, T): [record per seed]} plus SGD and ensemble records per seed."""
    results = {"sgd": [], "ensemble": []}
    for seed in args.seed_list:
        sgd_rec, sgd_weights = sgd_run(
            args, ctx, store, trainers, sgd_lr, seed, "posterior"
        )
        results["sgd"].append(sgd_rec)
        results["ensemble"].append(
            ensemble_run(args, ctx, store, trainers, sgd_lr, seed)
        )
        for setting, start, chain_lr in settings:
            for method, t in chain_methods(temps):
                key = store.make_key(
                    d=ctx.dataset,
                    run="chain",
                    start=start,
                    m=method,
                    T=t,
                    lr=chain_lr,
                    sgd_lr=sgd_lr,
                    seed=seed,
                    E=ctx.epochs,
                    C=ctx.chain,
                    B=ctx.burn_in,
                    K=ctx.samples,
                    quick=args.quick,
                )
                rec = store.get(
                    key, force=args.force and "posterior" in args.table_list
                )
                if rec is None:
                    if start == "warm":
                        chain = run_chain(
                            ctx,
                            method,
                            chain_lr,
                            t,
                            sgd_weights,
                            seed,
                            seed,
                            ctx.chain,
                            ctx.burn_in,
                        )
                    else:  # the SGD epochs as extra burn-in: the same cost as a warm chain
                        chain = run_chain(
                            ctx,
                            method,
                            chain_lr,
                            t,
                            None,
                            seed,
                            seed,
                            ctx.epochs + ctx.chain,
                            ctx.epochs + ctx.burn_in,
                        )
                    rec, mean = chain_record(ctx, chain, chain_lr, t)
                    if mean is not None:
                        common.save_array(args, "p|" + key, mean)
                    rec = store.put(key, rec)
                    common.log(
                        f"posterior: {ctx.dataset} seed {seed} {setting} {chain_label(method, t)}: "
                        f"{rec['updates']} updates in {rec['seconds']:.1f} s, test NLL {common.fmt(rec.get('nll'))}, "
                        f"diversity {common.fmt(rec.get('diversity'))}, drift {common.fmt(rec['drift'])} "
                        f"(predicted {common.fmt(rec['drift_predicted'])}), zeros {common.fmt(rec['zero_fraction'])}"
                    )
                rec["_key"] = key
                results.setdefault((setting, method, t), []).append(rec)
    return results


def paired_p(a, b):
    """Two-sided paired t-test p-value (nan with fewer than 2 pairs, non-finite values, or no spread)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if (
        len(a) < 2
        or len(a) != len(b)
        or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    ):
        return float("nan")
    d = a - b
    if np.all(d == d[0]):
        return float("nan") if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


METRICS = (
    ("accuracy", "accuracy %", 100.0),
    ("nll", "NLL", 1.0),
    ("ece", "ECE", 1.0),
    ("brier", "Brier", 1.0),
)


def _values(recs, metric, last=False):
    return [
        (r["last"][metric] if last else r.get(metric, float("nan")))
        if r.get("finite", True)
        else float("nan")
        for r in recs
    ]


def _diff_cell(a, b, scale=1.0):
    a, b = np.asarray(a, float) * scale, np.asarray(b, float) * scale
    if len(a) == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return "n/a"
    d = float(np.mean(a - b))
    return f"{d:+.3g} (p = {common.fmt(paired_p(a, b), 2)})"


def posterior_rows(ctx, results, temps, settings):
    """Rows (label, setting, epochs, {metric: values}) of one data set, in table order."""
    E, C = ctx.epochs, ctx.chain
    rows = [
        (
            "SGD final weights",
            "-",
            f"{E}",
            {m: _values(results["sgd"], m) for m, _, _ in METRICS},
        ),
        (
            f"deep ensemble of {ctx.samples} SGD runs",
            "-",
            f"{ctx.samples} x {E} = {ctx.samples * E}",
            {m: _values(results["ensemble"], m) for m, _, _ in METRICS},
        ),
    ]
    for setting, start, _ in settings:
        none = results[(setting, "none", 0.0)]
        if start == "warm":
            rows.append(
                (
                    f"SGD {E} epochs, then {C} at the chain's rate (no-noise chain's last iterate)",
                    setting,
                    f"{E + C}",
                    {m: _values(none, m, last=True) for m, _, _ in METRICS},
                )
            )
        for method, t in chain_methods(temps):
            recs = results[(setting, method, t)]
            rows.append(
                (
                    f"{chain_label(method, t)}: average of {ctx.samples} snapshots",
                    setting,
                    f"{E + C}",
                    {m: _values(recs, m) for m, _, _ in METRICS},
                )
            )
    return rows


def run_posterior_tables(args, contexts, all_results, temps, settings_of):
    rows, sig_rows = [], []
    for ctx in contexts:
        results = all_results[ctx.dataset]
        sgd_vals = {m: _values(results["sgd"], m) for m, _, _ in METRICS}
        for label, setting, epochs, vals in posterior_rows(
            ctx, results, temps, settings_of[ctx.dataset]
        ):
            control = None
            if setting != "-":
                control = {
                    m: _values(results[(setting, "none", 0.0)], m)
                    for m, _, _ in METRICS
                }
            cells = [common.fmt_pm(vals[m], scale=s) for m, _, s in METRICS]
            is_sgd = label.startswith("SGD final")
            vs_sgd = "-" if is_sgd else _diff_cell(vals["nll"], sgd_vals["nll"])
            is_control = label.startswith(METHOD_LABELS["none"])
            vs_none = (
                "-"
                if control is None or is_control
                else _diff_cell(vals["nll"], control["nll"])
            )
            rows.append(
                [ctx.dataset, setting, label, epochs]
                + cells
                + [vs_sgd, vs_none]
            )
            if not is_sgd:
                sig = [ctx.dataset, setting, label]
                for m, _, s in METRICS:
                    sig.append(_diff_cell(vals[m], sgd_vals[m], s))
                for m, _, s in METRICS:
                    sig.append(
                        "-"
                        if control is None or is_control
                        else _diff_cell(vals[m], control[m], s)
                    )
                sig_rows.append(sig)
    seeds = args.seed_list
    setting = "; ".join(
        f"{c.describe()}, SGD lr {c.sgd_lr:g} for E = {c.epochs} epochs, chains at lr "
        f"{' and '.join(f'{lr:g}' for lr in sorted({s[2] for s in settings_of[c.dataset]}, reverse=True))}, "
        f"C = {c.chain} epochs (burn-in {c.burn_in}), a snapshot every {c.thin} updates, "
        f"K = {c.samples}, weight decay 1/N = {c.weight_decay:.3g}"
        for c in contexts
    )
    notes = [
        f"Seeds {seeds}; mean ± std over seeds. {setting}.",
        "Chains: warm, from the seed's SGD solution (E epochs), C epochs with a burn-in of B; scratch, from the "
        "same random initialisation as SGD, E + C epochs with a burn-in of E + B; lr: the chain's constant rate "
        "(the lr table). Epochs: the training epochs behind the prediction (the deep ensemble trains K models "
        "of E epochs).",
        "Every run trains with the decoupled weight decay 1/N (the Gaussian prior N(0, 1) per weight); a chain "
        "at T samples (likelihood x prior)^(1/(N T)). QSGLD nearest uses Qp = 1/sqrt(24 lr T) of the same T.",
        "ΔNLL: mean over seeds of the paired difference (negative: better than the reference), two-sided paired "
        f"t-test (scipy.stats.ttest_rel) over the {len(seeds)} seeds. With 5 seeds the power is low, and "
        "Wilcoxon's signed-rank test could not go below p = 0.0625; the p-values are not corrected for the "
        "many comparisons.",
        "ECE: 15 equal-width confidence bins; the test splits are small (digits 360, MNIST-1D 1000 examples).",
    ]
    extra = "\n".join(
        f"![reliability_{c.dataset}.png](reliability_{c.dataset}.png)"
        for c in contexts
        if os.path.exists(
            os.path.join(args.output_dir, f"reliability_{c.dataset}.png")
        )
    )
    headers = (
        ["data set", "chain start, lr", "predictions", "epochs"]
        + [f"{name} (mean ± std)" for _, name, _ in METRICS]
        + ["ΔNLL vs SGD (p)", "ΔNLL vs no-noise chain (p)"]
    )
    outputs = []
    if "posterior" in args.table_list:
        outputs.append(
            common.write_table(
                args,
                "posterior",
                "Posterior sampling: test accuracy, NLL, ECE and Brier",
                headers,
                rows,
                notes,
                extra,
            )
        )
    if "significance" in args.table_list:
        sig_headers = (
            ["data set", "chain start, lr", "predictions"]
            + [f"Δ{name} vs SGD (p)" for _, name, _ in METRICS]
            + [f"Δ{name} vs no-noise chain (p)" for _, name, _ in METRICS]
        )
        sig_notes = notes[:1] + [
            "Δ: mean over seeds of (method - reference), paired by seed; p: two-sided paired t-test "
            "(scipy.stats.ttest_rel). Lower is better for NLL, ECE and Brier, higher for accuracy. The reference "
            "'no-noise chain' is the snapshot average of the chain without noise from the same start at the same "
            "rate.",
            "n/a: a run diverged (non-finite weights) on some seed.",
        ]
        outputs.append(
            common.write_table(
                args,
                "significance",
                "Paired tests against SGD and against the no-noise chain",
                sig_headers,
                sig_rows,
                sig_notes,
            )
        )
    return outputs


def run_signatures_table(args, contexts, all_results, temps, settings_of):
    rows = []
    for ctx in contexts:
        results = all_results[ctx.dataset]
        ens = results["ensemble"]
        rows.append(
            [
                ctx.dataset,
                "-",
                f"deep ensemble of {ctx.samples} SGD runs",
                f"{len(ens)}/{len(ens)}",
                common.fmt_pm(_values(ens, "single_nll")),
                common.fmt_pm(_values(ens, "nll")),
                common.fmt_pm(_values(ens, "diversity")),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
        for setting, _, _ in settings_of[ctx.dataset]:
            for method, t in chain_methods(temps):
                recs = results[(setting, method, t)]
                ok = [r for r in recs if r["finite"]]
                drift = [r["drift"] for r in ok]
                pred = [r["drift_predicted"] for r in ok]
                drift_s = [r.get("drift_sampling", float("nan")) for r in ok]
                pred_s = [
                    r.get("drift_sampling_predicted", float("nan")) for r in ok
                ]
                ratio = (
                    "-"
                    if t == 0
                    else common.fmt_pm([d / p for d, p in zip(drift, pred)])
                )
                ratio_s = (
                    "-"
                    if t == 0
                    else common.fmt_pm([d / p for d, p in zip(drift_s, pred_s)])
                )
                zero = (
                    "-"
                    if method not in ("dithered", "nearest")
                    else common.fmt_pm([r["zero_fraction"] for r in ok])
                )
                rows.append(
                    [
                        ctx.dataset,
                        setting,
                        chain_label(method, t),
                        f"{len(ok)}/{len(recs)}",
                        common.fmt_pm([r["single_nll"] for r in ok]),
                        common.fmt_pm([r["nll"] for r in ok]),
                        common.fmt_pm([r["diversity"] for r in ok]),
                        common.fmt_pm(drift)
                        + (
                            ""
                            if t == 0
                            else f" (pred. {common.fmt(np.mean(pred))})"
                        ),
                        ratio,
                        common.fmt_pm(drift_s)
                        + (
                            ""
                            if t == 0
                            else f" (pred. {common.fmt(np.mean(pred_s))})"
                        ),
                        ratio_s,
                        zero,
                        common.fmt_pm([r["train_loss"] for r in ok]),
                    ]
                )
    headers = [
        "data set",
        "chain start, lr",
        "chain",
        "finite runs",
        "single-snapshot NLL",
        "NLL of the average",
        "diversity (Δ)",
        "drift whole chain ‖w_end - w_start‖",
        "drift / predicted",
        "drift sampling phase",
        "drift / predicted",
        "zero increments",
        "final train loss",
    ]
    notes = [
        "Diversity: mean single-snapshot test NLL minus the test NLL of the snapshots' average (>= 0 by "
        "Jensen's inequality); for the deep ensemble, over its members.",
        "Drift: Euclidean norm of the change of all P weights, over the whole chain (start: the SGD solution "
        "for warm, the random initialisation for scratch) and over the sampling phase (first to last snapshot). "
        "Predicted: sqrt(P 2 lr T steps), the spread that the injected noise alone gives a free random walk "
        "(no gradient, no prior); the gradient also moves the weights (the no-noise row shows that drift), "
        "and the likelihood's curvature and the prior hold the noise back (ratio < 1).",
        "Zero increments: share of the quantized increments that were exactly 0 over the chain (QSGLD's "
        "noise statistics); weight decay moves the weights outside the quantization. Final train loss: "
        "NLL of the chain's last weights on the whole training set.",
    ]
    return common.write_table(
        args,
        "signatures",
        "Signatures of a sampler: snapshot diversity and weight drift",
        headers,
        rows,
        notes,
    )


def reliability_plot(args, ctx, results, temps, seed, setting):
    """Reliability diagrams of one seed (warm chains)."""
    panels = {}
    for label, key in _diagram_keys(ctx, results, temps, setting):
        probs = common.load_array(args, "p|" + key) if key else None
        if probs is not None:
            panels[label] = probs
    if not panels:
        return None
    path = os.path.join(args.output_dir, f"reliability_{ctx.dataset}.png")
    calibration.reliability_diagram(
        ctx.y_test,
        panels,
        path,
        title=f"{ctx.dataset}, seed {seed}, chains {setting}",
    )
    return path


def _diagram_keys(ctx, results, temps, setting):
    out = []
    for label, recs in (
        ("SGD", results["sgd"]),
        (f"ensemble of {ctx.samples}", results["ensemble"]),
    ):
        out.append((label, recs[0].get("_key")))
    for method, t in [
        ("none", 0.0),
        ("dithered", temps[0]),
        ("gaussian", temps[0]),
        ("dithered", temps[-1]),
    ]:
        recs = results.get((setting, method, t))
        if recs:
            out.append(
                (
                    chain_label(method, t).replace(" (snapshot ensemble)", ""),
                    recs[0].get("_key"),
                )
            )
    return out
