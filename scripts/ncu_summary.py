#!/usr/bin/env python3
"""Summarizes an Nsight Compute report exported as CSV: what bounds each kernel.

    ncu --import R.ncu-rep --page details --csv > details.csv
    ncu --import R.ncu-rep --page raw --csv > raw.csv
    ncu --import R.ncu-rep --page source --csv --print-source sass > sass.csv   # one kernel
    python3 scripts/ncu_summary.py --details details.csv --raw raw.csv [--sass sass.csv]

Per kernel: time, clock, the tensor pipe's and shared memory's activity, DRAM and L2
throughput, issue-slot use and the largest stall reasons per issued instruction. With
--sass (the source page holds one kernel, the report's first): the instructions that
collect the most stall samples, with their two largest reasons, and the share of samples
in each --regions range of addresses. scripts/gpu_ncu.sh runs all of it on the GPU machine.
"""

import argparse
import csv
import sys

# Raw metrics shown per kernel: (label, metric); byte counts are shown in MB.
RAW = [
    ("tensor pipe active %", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
    ("shared memory wavefronts %",
     "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed"),
    ("L2 throughput %", "lts__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("L2 hit rate %", "lts__t_sector_hit_rate.pct"),
    ("DRAM read MB", "dram__bytes_read.sum"),
    ("DRAM written MB", "dram__bytes_write.sum"),
]
TO_MB = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}
DETAILS = ["Duration", "SM Frequency", "DRAM Throughput", "Issue Slots Busy",
           "Registers Per Thread", "Eligible Warps Per Scheduler"]
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def kernel_details(path):
    """{kernel id: (name, {metric: (value, unit)})} from the details page."""
    rows = read_csv(path)
    head = rows[0]
    at = {name: head.index(name) for name in
          ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")}
    kernels = {}
    for r in rows[1:]:
        if len(r) <= at["Metric Value"]:
            continue
        name, metrics = kernels.setdefault(r[at["ID"]], (r[at["Kernel Name"]], {}))
        metrics.setdefault(r[at["Metric Name"]], (r[at["Metric Value"]], r[at["Metric Unit"]]))
    return kernels


def kernel_raw(path):
    """{kernel id: {metric: (value, unit)}} from the raw page (a header row, a units row, a row
    per kernel)."""
    rows = read_csv(path)
    head, units = rows[0], rows[1]
    kid = head.index("ID")
    return {r[kid]: {m: (v, u) for m, v, u in zip(head, r, units)}
            for r in rows[2:] if len(r) == len(head)}


def print_kernels(details, raw):
    for kid, (name, metrics) in details.items():
        print(f"== kernel {kid}: {name[:150]}")
        for label in DETAILS:
            if label in metrics:
                value, unit = metrics[label]
                print(f"   {label:<30} {value} {unit}")
        values = raw.get(kid, {})
        for label, metric in RAW:
            text, unit = values.get(metric, ("", ""))
            v = number(text)
            if v is not None:
                print(f"   {label:<30} {v * TO_MB.get(unit, 1.0):.1f}")
        stalls = []
        for metric, (text, _) in values.items():
            if metric.startswith(STALL_PREFIX) and metric.endswith(STALL_SUFFIX):
                v = number(text)
                reason = metric[len(STALL_PREFIX):-len(STALL_SUFFIX)]
                if v and reason != "selected":
                    stalls.append((v, reason))
        stalls.sort(reverse=True)
        if stalls:
            print("   stalls per issued instruction: " +
                  ", ".join(f"{reason} {v:.2f}" for v, reason in stalls[:6]))


def print_sass(path, top, regions):
    rows = read_csv(path)
    # Row 0 names the kernel, row 1 is the header; another kernel's section may follow.
    if len(rows) < 2 or "Warp Stall Sampling (All Samples)" not in rows[1]:
        print(f"ncu_summary: {path} holds no SASS source page")
        return
    head, data = rows[1], []
    for r in rows[2:]:
        if r and r[0] == "Kernel Name":
            break
        if len(r) == len(head):
            data.append(r)
    samples = head.index("Warp Stall Sampling (All Samples)")
    reasons = [(i, h[len("stall_"):]) for i, h in enumerate(head)
               if h.startswith("stall_") and not h.endswith("(Not Issued)")]
    total = sum(number(r[samples]) or 0 for r in data)
    print(f"== {rows[0][1][:150] if len(rows[0]) > 1 else 'kernel'}: {total:.0f} stall samples")
    if total == 0:
        return
    if regions:
        shares = {}
        for r in data:
            address = int(r[0], 16) % (1 << 20)
            label = next((name for name, lo, hi in regions if lo <= address < hi), "other")
            shares[label] = shares.get(label, 0) + (number(r[samples]) or 0)
        for label, s in shares.items():
            print(f"   {label:<20} {100 * s / total:5.1f} %")
    hot = sorted(data, key=lambda r: number(r[samples]) or 0, reverse=True)[:top]
    for r in hot:
        s = number(r[samples]) or 0
        why = sorted(((number(r[i]) or 0, name) for i, name in reasons), reverse=True)[:2]
        why = ", ".join(f"{name} {v:.0f}" for v, name in why if v > 0)
        print(f"   {r[0][-5:]} {100 * s / total:5.1f} %  {r[1][:60]:<60} {why}")


def parse_regions(text):
    """'k loop=99e0:bb60,epilogue=bb60:14d00' -> [(name, lo, hi)] of address offsets (hex)."""
    regions = []
    for part in filter(None, (text or "").split(",")):
        name, _, span = part.partition("=")
        lo, _, hi = span.partition(":")
        try:
            regions.append((name, int(lo, 16), int(hi, 16)))
        except ValueError:
            sys.exit(f"ncu_summary: --regions: '{part}' is not NAME=LO:HI in hex")
    return regions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", help="the details page as CSV")
    parser.add_argument("--raw", help="the raw page as CSV")
    parser.add_argument("--sass", help="the source page (SASS) of one kernel as CSV")
    parser.add_argument("--top", type=int, default=15, help="hottest instructions to list")
    parser.add_argument("--regions", help="NAME=LO:HI,... address ranges (hex, the last 5 "
                        "digits as listed) whose shares of the samples to print")
    args = parser.parse_args()
    if not (args.details or args.sass):
        parser.error("give --details (with --raw) and/or --sass")
    if args.details:
        print_kernels(kernel_details(args.details), kernel_raw(args.raw) if args.raw else {})
    if args.sass:
        print_sass(args.sass, args.top, parse_regions(args.regions))


if __name__ == "__main__":
    main()
