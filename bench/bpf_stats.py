#!/usr/bin/env python3
"""The run time of one node's BPF programs, from the kernel's own counters.

    bench/bpf_stats.py NODE...

Prints one JSON object: program name -> [run_time_ns, run_cnt], summed over the nodes named
(their pins in /sys/fs/bpf/ciliate/NODE). A program belongs to a node when it uses one of the
maps pinned there, so other agents on the machine are never counted. Prints {} when the kernel
does not count (`sysctl kernel.bpf_stats_enabled=1` turns it on) or bpftool is missing: the
figures are an addition to the benches, never a requirement.
"""
import json
import os
import shutil
import subprocess
import sys

PINS = "/sys/fs/bpf/ciliate"


def bpftool(*args):
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def node_map_ids(node):
    ids = set()
    d = os.path.join(PINS, node)
    for name in os.listdir(d):
        path = os.path.join(d, name)
        if name.startswith("cil_") and os.path.isfile(path):
            try:
                ids.add(bpftool("map", "show", "pinned", path)["id"])
            except (subprocess.CalledProcessError, KeyError, ValueError):
                pass
    return ids


def main():
    stats = {}
    try:
        enabled = open("/proc/sys/kernel/bpf_stats_enabled").read().strip() == "1"
    except OSError:
        enabled = False
    if enabled and shutil.which("bpftool"):
        maps = set()
        for node in sys.argv[1:]:
            maps |= node_map_ids(node)
        for prog in bpftool("prog", "show"):
            if maps.isdisjoint(prog.get("map_ids", [])) or "run_cnt" not in prog:
                continue
            t = stats.setdefault(prog["name"], [0, 0])
            t[0] += prog.get("run_time_ns", 0)
            t[1] += prog["run_cnt"]
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
