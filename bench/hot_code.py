#!/usr/bin/env python3
"""Which of the agent's functions ran, for crates/agent/hot-code.txt (see crates/agent/build.rs).

  hot_code.py pages PID OUT
      OUT: the file offsets of the pages of PID's executable that are in its memory, one per
      line (`/proc/PID/pagemap`; run as root). Only exact when the executable sits on a file
      system that reads no more than each fault asks (`bench/hot-code.sh` makes one): else
      readahead and fault-around map 64 KB and more around each page that ran.
  hot_code.py list BINARY PAGES [BINARY PAGES ...]
      Prints the list: the functions that overlap a page that ran, in every binary given (each
      with its pages). Two builds with different layouts put different neighbours on a page,
      so their intersection is closer to what ran than either.
"""
import collections
import os
import re
import struct
import subprocess
import sys

PAGE = 4096
# A generic function's instances share their path and differ only by the hash: a path whose
# other functions that did not run come to more than this keeps the hash.
SLACK = 1024


def pages(pid, out):
    exe = os.readlink(f"/proc/{pid}/exe")
    present = []
    with open(f"/proc/{pid}/pagemap", "rb") as pm, open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != exe:
                continue
            start, end = (int(x, 16) for x in f[0].split("-"))
            offset = int(f[2], 16)
            n = (end - start) // PAGE
            pm.seek(start // PAGE * 8)
            data = pm.read(n * 8)
            for i in range(n):
                (entry,) = struct.unpack_from("<Q", data, i * 8)
                if entry >> 63:
                    present.append(offset + i * PAGE)
    with open(out, "w") as f:
        f.writelines(f"{o:x}\n" for o in present)


def text_segment(binary):
    """(file offset, virtual address, size) of the executable PT_LOAD segment."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            return int(f[1], 16), int(f[2], 16), int(f[4], 16)
    sys.exit(f"{binary}: no executable segment")


def functions(binary):
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True,
                         check=True)
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW" and int(f[1], 16):
            yield int(f[0], 16), int(f[1], 16), re.sub(r"\.llvm\.\d+$", "", f[3])


def ran(binary, pagefile):
    off, vaddr, size = text_segment(binary)
    touched = set()
    for line in open(pagefile):
        o = int(line, 16)
        if off & ~(PAGE - 1) <= o < off + size:
            touched.add(o - off + vaddr)
    names = set()
    for a, s, n in functions(binary):
        first, last = a & ~(PAGE - 1), (a + s - 1) & ~(PAGE - 1)
        if any(p in touched for p in range(first, last + 1, PAGE)):
            names.add(n)
    return names


def wild(name):
    """The section pattern with the hash left out (legacy mangling: `17h<16 hex digits>E`;
    v0, the standard library's: the crates' disambiguators)."""
    m = re.match(r"^(_ZN.*17h)[0-9a-f]{16}E$", name)
    if m:
        return m.group(1) + "*"
    if name.startswith("_R"):
        return re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name)
    return name


def cargo_lock_fingerprint():
    """FNV-1a (64 bits) of the workspace's Cargo.lock, as crates/agent/build.rs computes it."""
    lock = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Cargo.lock")
    h = 0xCBF29CE484222325
    with open(lock, "rb") as f:
        for b in f.read():
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def listing(args):
    if not args or len(args) % 2:
        sys.exit(__doc__)
    run = None
    for binary, pagefile in zip(args[0::2], args[1::2]):
        names = ran(binary, pagefile)
        run = names if run is None else run & names
    total, hot = collections.Counter(), collections.Counter()
    for _, s, n in functions(args[-2]):
        total[wild(n)] += s
        if n in run:
            hot[wild(n)] += s
    out = set()
    for n in run:
        k = wild(n)
        # `*` after an exact name: rustc's ThinLTO may add `.llvm.<number>` to it.
        out.add(k if total[k] - hot[k] <= SLACK else n + "*" if n.startswith("_ZN") else n)
    print(f"{len(run)} functions ran, {sum(hot.values()) / 1048576:.1f} MB; {len(out)} patterns",
          file=sys.stderr)
    print("# The agent's functions that ran in bench/pod2pod.sh, placed first in its .text by")
    print("# build.rs. Made by bench/hot-code.sh; see crates/agent/build.rs.")
    # build.rs warns when Cargo.lock no longer matches: generic functions' hashes change
    # with the dependencies, and the list then goes stale.
    print(f"# Cargo.lock fnv1a64: {cargo_lock_fingerprint():016x}")
    for p in sorted(out):
        print(p)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "pages":
        pages(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "list":
        listing(sys.argv[2:])
    else:
        sys.exit(__doc__)
