# Sourced by benches/*.sh: the machine's load while a section measures, so every table can say
# how busy the machine was (other processes inflate waiting, and ratios between contenders
# measured in turn drift when the load changes between them).
#
#   load_start            after building, right before measuring
#   load_line             after measuring: prints one Markdown line with the 1-minute load
#                         average before and after and the CPU busy fraction of the whole
#                         machine in between (every process, the benchmark's own included)

load_start() {
  _load_before=$(cut -d' ' -f1 /proc/loadavg)
  _cpu_before=$(awk '/^cpu / {idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print idle, total}' /proc/stat)
}

load_line() {
  local after cpu_after
  after=$(cut -d' ' -f1 /proc/loadavg)
  cpu_after=$(awk '/^cpu / {idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print idle, total}' /proc/stat)
  local busy
  busy=$(awk -v b="$_cpu_before" -v a="$cpu_after" 'BEGIN {split(b, x, " "); split(a, y, " ");
    t = y[2] - x[2]; if (t <= 0) {print "n/a"; exit} printf "%.0f%%", 100 * (1 - (y[1] - x[1]) / t)}')
  echo "Machine load during this section: 1-minute load average ${_load_before} before, ${after} after ($(nproc) cores); all CPUs ${busy} busy (this benchmark included)."
}
