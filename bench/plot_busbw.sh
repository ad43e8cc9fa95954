#!/usr/bin/env bash
# Bus bandwidth against message size for gloo, shm and memcpy, from the CSV
# of bench_collectives --csv: one PNG per collective and dtype asked for.
#
#   bench/plot_busbw.sh CSV PNG [COLLECTIVE] [DTYPE] [TITLE]
set -euo pipefail
csv=${1:?usage: plot_busbw.sh CSV PNG [COLLECTIVE] [DTYPE] [TITLE]}
png=${2:?usage: plot_busbw.sh CSV PNG [COLLECTIVE] [DTYPE] [TITLE]}
op=${3:-all_reduce}
dtype=${4:-float32}
title=${5:-"$op, $dtype"}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
# bytes gloo shm memcpy, for the rows asked for (columns as bench writes them)
awk -F, -v op="$op" -v dt="$dtype" 'NR > 1 && $1 == op && $2 == dt { print $3, $4, $5, $6 }' "$csv" >"$data"
[[ -s $data ]] || { echo "plot_busbw: no $op $dtype rows in $csv" >&2; exit 1; }
gnuplot <<GP
set terminal pngcairo size 900,560 noenhanced
set output "$png"
set title "$title"
set logscale x 2
set logscale y 10
set xlabel "message size (bytes)"
set ylabel "GB/s (bus bandwidth; memcpy: bytes copied / s)"
set format x "%.0b%B"
set key top left
set grid
plot "$data" using 1:2 with linespoints lw 2 title "gloo", \
     "$data" using 1:3 with linespoints lw 2 title "shm", \
     "$data" using 1:4 with linespoints lw 2 dt 2 title "memcpy (one rank)"
GP
echo "wrote $png"
