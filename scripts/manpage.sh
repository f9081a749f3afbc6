#!/bin/sh
# vfiomond(8) from the command line's argparse definitions (vfiomond/cli.py), with
# argparse-manpage (python3-argparse-manpage): section 8, a NAME line whatis reads.
#   scripts/manpage.sh OUT
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=$1
version=$(cd "$src" && ${PYTHON:-/usr/bin/python3} -c 'import vfiomond; print(vfiomond.__version__)')
tmp=$out.tmp
PYTHONPATH=$src argparse-manpage --module vfiomond.cli --function _parser --project-name vfiomond \
    --author "vfiomond developers" --url https://github.com/vfiomond/vfiomond --output "$tmp"
sed -e "1s/.*/.TH VFIOMOND 8 \"\" \"vfiomond $version\" \"System Administration\"/" \
    -e '/^\.SH NAME$/{n;s/.*/vfiomond \\- Prometheus exporter for the kernel'"'"'s VFIO paths (eBPF)/;}' "$tmp" >"$out"
rm -f "$tmp"
