#!/usr/bin/env python3
"""bench/blas_compare.py — compare BLAS configurations with bench/sgemm_ceiling,
interleaved: every round runs each configuration once (one process each, since
the library and OpenBLAS core are fixed at load), so slow phases of a shared,
noisy machine hit all configurations alike. Repetitions are pooled across
rounds; we print median and min..max per configuration.

  python3 bench/blas_compare.py --bin build/sgemm_ceiling --rounds 3 --reps 2 \
      --threads 1,2 --configs default,skx-pthread,skx-openmp,haswell,blis-openmp,blis-pthread \
      [--extra=--no-ceiling] [--out raw.jsonl]
  python3 bench/blas_compare.py --contention --bin build/omp_blas_contention --rounds 5 \
      --reps 5 --threads 2 --configs all [--extra="--iters 20"] [--out raw.jsonl]
  python3 bench/blas_compare.py --raw --key tokens_per_s --bin build/train_bench \
      --extra="gpt2 4 64 5 2" --rounds 4 --configs auto,skx-pthread,skx-pthread-to4,blis-openmp
      (any program printing JSON lines, run as is under each configuration's environment)
  python3 bench/blas_compare.py --report raw.jsonl ...   (sgemm or contention records)

A configuration is a name from CONFIGS (environment for the process). Nothing
here is used by ponder itself; PONDER_BLAS is a benchmark-only switch.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

QUIET = 0.15  # "quiet" samples: other processes used < this many cores meanwhile


def busy_seconds():
    """CPU seconds all processes have used on this machine (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

# name -> environment. OPENBLAS_CORETYPE and OPENBLAS_THREAD_TIMEOUT are set
# explicitly so that blas.c's own choices (SkylakeX on AVX-512, timeout 4 for
# the pthread build) do not hide the configuration under test; 28 is OpenBLAS's
# built-in default timeout (2^28 cycles). "default" is the core OpenBLAS 0.3.21
# detects by itself on this machine (check with `env -u OPENBLAS_CORETYPE
# build/blas_probe`: Cooperlake on the Zen4 EPYC this was written on).
_TO28 = {"OPENBLAS_THREAD_TIMEOUT": "28"}
CONFIGS = {
    "default": dict(_TO28, PONDER_BLAS="openblas-pthread", OPENBLAS_CORETYPE="Cooperlake"),
    "skx-pthread": dict(_TO28, PONDER_BLAS="openblas-pthread", OPENBLAS_CORETYPE="SkylakeX"),
    "skx-pthread-to4": {"PONDER_BLAS": "openblas-pthread", "OPENBLAS_CORETYPE": "SkylakeX",
                        "OPENBLAS_THREAD_TIMEOUT": "4"},
    "skx-openmp": {"PONDER_BLAS": "openblas-openmp", "OPENBLAS_CORETYPE": "SkylakeX"},
    "cpl-openmp": {"PONDER_BLAS": "openblas-openmp", "OPENBLAS_CORETYPE": "Cooperlake"},
    "haswell": dict(_TO28, PONDER_BLAS="openblas-pthread", OPENBLAS_CORETYPE="Haswell"),
    "zen": dict(_TO28, PONDER_BLAS="openblas-pthread", OPENBLAS_CORETYPE="Zen"),
    "prescott": dict(_TO28, PONDER_BLAS="openblas-pthread", OPENBLAS_CORETYPE="Prescott"),
    "blis-openmp": {"PONDER_BLAS": "blis"},
    "blis-pthread": {"PONDER_BLAS": "blis-pthread"},
    "auto": {"PONDER_BLAS": "auto"},
}

# bench/omp_blas_contention: name -> (environment, extra arguments). OpenBLAS
# runs the SkylakeX core. obp = pthread build, obo = OpenMP build; -to4 = idle
# BLAS workers sleep at once, otherwise OpenBLAS's default timeout (28).
# ponder's command itself re-executes with GOMP_SPINCOUNT=10000 unless the user
# set a policy (launch/ponder_main.c), so the -spin10k rows are what it runs.
_OBP = {"PONDER_BLAS": "openblas-pthread", "OPENBLAS_CORETYPE": "SkylakeX",
        "OPENBLAS_THREAD_TIMEOUT": "28"}
_OBP4 = dict(_OBP, OPENBLAS_THREAD_TIMEOUT="4")
_OBO = {"PONDER_BLAS": "openblas-openmp", "OPENBLAS_CORETYPE": "SkylakeX"}
_SPIN = {"GOMP_SPINCOUNT": "10000"}
CONTENTION = {
    "obp": (_OBP, []),
    "obp-passive": (dict(_OBP, OMP_WAIT_POLICY="passive"), []),
    "obp-active": (dict(_OBP, OMP_WAIT_POLICY="active"), []),
    "obp-spin10k": (dict(_OBP, **_SPIN), []),
    "obp-to4": (_OBP4, []),
    "obp-to4-passive": (dict(_OBP4, OMP_WAIT_POLICY="passive"), []),
    "obp-to4-spin10k": (dict(_OBP4, **_SPIN), []),
    "obo": (_OBO, []),
    "obo-passive": (dict(_OBO, OMP_WAIT_POLICY="passive"), []),
    "obo-active": (dict(_OBO, OMP_WAIT_POLICY="active"), []),
    "obo-spin10k": (dict(_OBO, **_SPIN), []),
    "obo-setenv-passive": (_OBO, ["--setenv-passive"]),
    "blis-omp": ({"PONDER_BLAS": "blis"}, []),
    "blis-omp-passive": ({"PONDER_BLAS": "blis", "OMP_WAIT_POLICY": "passive"}, []),
    "blis-omp-spin10k": (dict({"PONDER_BLAS": "blis"}, **_SPIN), []),
    "blis-pth": ({"PONDER_BLAS": "blis-pthread"}, []),
    "blis-pth-spin10k": (dict({"PONDER_BLAS": "blis-pthread"}, **_SPIN), []),
}


def run_one(binary, name, threads, reps, extra, contention=False, raw=False):
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "PONDER_BLAS", "BLIS_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS"):
        env.pop(k, None)
    if contention:
        cenv, cargs = CONTENTION[name]
        env.update(cenv)
        extra = cargs + extra
    else:
        env.update(CONFIGS[name])
    cmd = [binary, "--json", "--threads", str(threads), "--reps", str(reps)] + extra
    if raw:
        cmd = [binary] + extra
    b0, c0, t0 = busy_seconds(), children_seconds(), time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t0
    # Cores used by everything else on the machine while this process ran.
    foreign = max(0.0, (busy_seconds() - b0) - (children_seconds() - c0)) / wall
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for r in recs:
        r["config"] = name
        r["foreign_load"] = round(foreign, 3)
    return recs


def fmt(vals):
    if not vals:
        return "-"
    return "%.1f [%.1f..%.1f] n=%d" % (statistics.median(vals), min(vals), max(vals), len(vals))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/sgemm_ceiling")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--configs", default="default,skx-pthread,skx-openmp,haswell,blis-openmp,blis-pthread")
    ap.add_argument("--extra", default="", help="more sgemm_ceiling arguments")
    ap.add_argument("--out", default="", help="append raw JSON records here")
    ap.add_argument("--contention", action="store_true", help="run omp_blas_contention configs")
    ap.add_argument("--raw", action="store_true",
                    help="run --bin with --extra only, under CONFIGS environments")
    ap.add_argument("--key", default="tokens_per_s", help="--raw: JSON field to summarise")
    a = ap.parse_args()
    configs = a.configs.split(",")
    if a.contention and a.configs == "all":
        configs = list(CONTENTION)
    threads = [int(t) for t in a.threads.split(",")]
    recs = []
    for rnd in range(a.rounds):
        for t in threads:
            for c in configs:
                rr = run_one(a.bin, c, t, a.reps, a.extra.split(), a.contention, a.raw)
                for r in rr:
                    r["round"] = rnd
                recs += rr
                if a.out:
                    with open(a.out, "a") as f:
                        for r in rr:
                            f.write(json.dumps(r) + "\n")
                print("round %d threads %s %-12s done" % (rnd, "-" if a.raw else t, c),
                      file=sys.stderr, flush=True)
            if a.raw:
                break  # the thread count is in --extra
    if a.raw:
        report_raw(recs, a.key)
    else:
        report(recs)


def report_raw(recs, key):
    print("%s: median [min..max] n=runs, all runs | quiet runs (other processes < %.2f cores)"
          % (key, QUIET))
    for cfg in dict.fromkeys(r["config"] for r in recs):
        sel = [r for r in recs if r["config"] == cfg]
        vals = [r[key] for r in sel]
        q = [r[key] for r in sel if r["foreign_load"] < QUIET]
        lib = "%s %s" % (sel[0].get("blas", ""), sel[0].get("blas_core", ""))
        print("  %-16s %-34s %-34s %s" % (cfg, fmt(vals), fmt(q), lib))


def report_contention(recs):
    cfgs = []
    for r in recs:
        if (r["config"], r["threads"]) not in cfgs:
            cfgs.append((r["config"], r["threads"]))
    print("ms per iteration (tanh pass + sgemm), median [min..max] over all repetitions of all")
    print("rounds; tanh/sgemm parts and 'alone' columns: median of per-process medians;")
    print("idle: CPU ms burnt in a 20 ms sleep after an OpenMP region / after an sgemm")
    print("quiet: only processes during which other processes used < %.2f cores" % QUIET)
    print("%-20s %2s %-26s %-26s %7s %7s %7s %7s %5s %5s %5s" % (
        "config", "th", "alternating (all)", "alternating (quiet)", "tanh", "sgemm", "tanh1",
        "sgemm1", "cpu/w", "idleO", "idleB"))
    med = statistics.median
    for (cfg, t) in cfgs:
        sel = [r for r in recs if (r["config"], r["threads"]) == (cfg, t)]
        alt = [v for r in sel for v in r["alt"]]
        qalt = [v for r in sel if r.get("foreign_load", 0) < QUIET for v in r["alt"]]
        q = "%.2f [%.2f..%.2f] n=%d" % (med(qalt), min(qalt), max(qalt), len(qalt)) if qalt else "-"
        print("%-20s %2d %-26s %-26s %7.2f %7.2f %7.2f %7.2f %5.2f %5.1f %5.1f" % (
            cfg, t, "%.2f [%.2f..%.2f] n=%d" % (med(alt), min(alt), max(alt), len(alt)), q,
            med([r["alt_tanh_ms"] for r in sel]), med([r["alt_gemm_ms"] for r in sel]),
            med([r["tanh_only_ms"] for r in sel]), med([r["gemm_only_ms"] for r in sel]),
            med([r["alt_cpu_per_wall"] for r in sel]), med([r["idle_cpu_ms_after_omp"] for r in sel]),
            med([r["idle_cpu_ms_after_gemm"] for r in sel])))


def report(recs):
    if recs and recs[0].get("bench") == "omp_blas_contention":
        return report_contention(recs)
    keys = []
    for r in recs:
        k = (r["bt"], r["layer"], r["pass"])
        if k not in keys:
            keys.append(k)
    cfgs = []
    for r in recs:
        c = (r["config"], r["threads"])
        if c not in cfgs:
            cfgs.append(c)
    core = {(r["config"], r["threads"]): r["core"] for r in recs}
    print("per-shape GFLOP/s: median [min..max] n=samples (repetitions pooled over rounds);")
    print("'step' = matmul FLOPs of one GPT-2 124M step / sum of median times, one value per round")
    print("second column: quiet processes only (other processes used < %.2f cores meanwhile)" % QUIET)
    for (cfg, t) in cfgs:
        print("\n== %s (core %s), %d threads" % (cfg, core[(cfg, t)], t))
        for k in keys:
            sel = [r for r in recs if (r["config"], r["threads"]) == (cfg, t)
                   and (r["bt"], r["layer"], r["pass"]) == k]
            quiet = [r for r in sel if r.get("foreign_load", 0) < QUIET]
            if k[1] == "step":
                vals, qvals = [r["median"] for r in sel], [r["median"] for r in quiet]
            else:
                vals = [g for r in sel for g in r["gflops"]]
                qvals = [g for r in quiet for g in r["gflops"]]
            print("  bt=%-5s %-12s %-7s %-30s %s" % (k[0], k[1], k[2], fmt(vals), fmt(qvals)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--report":
        report([json.loads(l) for p in sys.argv[2:] for l in open(p) if l.startswith("{")])
    else:
        main()
