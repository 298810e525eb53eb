#!/usr/bin/env bash
# Prints crates/agent/hot-code.txt anew: the agent's functions that ran in bench/pod2pod.sh
# (start-up, two endpoints, a round of keep-alive and of new connections, 98 more endpoints).
# crates/agent/build.rs links them first in the release binary (why: bench/README.md, "Agent
# memory (session 13)").
#
#   sudo bench/hot-code.sh BIN_DIR [BIN_DIR ...] > crates/agent/hot-code.txt
#
# Each BIN_DIR holds the release binaries (as CILIATE_BIN_DIR for pod2pod.sh) of a build of the
# same sources and dependencies. Give two whose agents are laid out differently (one linked with
# the list in force, one with an empty list): a function counts as run when a page it is on
# ran in each of them, and neighbours differ from one layout to the other.
#
# How the pages that ran are found: the binaries are copied to a file system of this run's own
# (ext4 in a file, on a loop device with readahead off), so that each page fault of the agent
# reads only its page and fault-around maps only pages already read; pod2pod.sh then writes
# the pages of the agent's executable in its memory (CILIATE_AGENT_PAGES). Needs root, losetup,
# mkfs.ext4. Removes the file system, the loop device and its files on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [BIN_DIR ...] > crates/agent/hot-code.txt" >&2; exit 2; }
for d in "$@"; do
  [ -x "$d/ciliate-agent" ] || { echo "$d: no ciliate-agent in it" >&2; exit 2; }
done

TMP=$(mktemp -d)
LOOP=
MOUNTED=
cleanup() {
  set +e
  [ -z "$MOUNTED" ] || umount "$TMP/mnt"
  [ -z "$LOOP" ] || losetup -d "$LOOP"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap "exit 130" INT TERM

mb=$(du -smcL "$@" | tail -1 | cut -f1)
truncate -s "$((mb * 3 / 2 + 64))M" "$TMP/fs.img"
mkfs.ext4 -q -F "$TMP/fs.img"
LOOP=$(losetup -f --show "$TMP/fs.img")
blockdev --setra 0 "$LOOP"
mkdir "$TMP/mnt"
mount "$LOOP" "$TMP/mnt"
MOUNTED=1
i=0
for d in "$@"; do
  i=$((i + 1))
  mkdir "$TMP/mnt/$i"
  cp -L "$d"/* "$TMP/mnt/$i/"
done
# Mounted again: nothing of the copies is left in the page cache.
umount "$TMP/mnt"
mount "$LOOP" "$TMP/mnt"

args=()
i=0
for d in "$@"; do
  i=$((i + 1))
  echo "$d: pod2pod.sh, 1 round..." >&2
  CILIATE_BIN_DIR=$TMP/mnt/$i CILIATE_AGENT_PAGES=$TMP/pages$i bench/pod2pod.sh --no-build --secs 3 --runs 1 >&2
  args+=("$TMP/mnt/$i/ciliate-agent" "$TMP/pages$i.end")
done
bench/hot_code.py list "${args[@]}"
