#!/bin/sh
# The lab guest's job, started by /sbin/vfiomond-lab-init (see tests/lab/image.sh)
# with the checkout at /lab/src (read-only), results at /lab/out, and the
# user's EXTRA folder at /lab/extra.  Parameters come on the kernel command line:
#   vfiomond.scenario=NAME[+NAME...] vfiomond.port=PORT vfiomond.demo=0|1
# Several scenarios joined by "+" run one after the other under one vfiomond
# (tests/lab/lab.py: boots that do not disturb each other share a boot).
# Every step leaves a line in /lab/out/steps; the host reads the files here.
set -u
src=/lab/src
out=/lab/out
param() { tr ' ' '\n' </proc/cmdline | sed -n "s/^vfiomond\.$1=//p"; }
scenario=$(param scenario)
port=$(param port)
demo=$(param demo)
hold=$(param hold)
# timeline: the guest's uptime at each step (tests/lab/lab.py times boots with it).
step() { echo "lab: $*"; echo "$*" >>"$out/steps"; echo "$(cut -d' ' -f1 /proc/uptime) $*" >>"$out/timeline"; }
fail() { step "FAILED: $*"; echo "$*" >"$out/failed"; exit 1; }

mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# Bytecode kept as an installed package keeps it: the checkout is read-only, and
# without a cache every python3 start here would compile vfiomond's modules again
# (seconds under TCG, counted in the bench scenario's start-up time).
export PYTHONPYCACHEPREFIX=/tmp/pycache
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname vfiomond-lab
ip link set lo up
modprobe virtio_net
# The virtio NIC carries the host's scrapes (the e1000e is DPDK's).
nic=
for dev in /sys/class/net/*; do
    [ "$(basename "$(readlink "$dev/device/driver" 2>/dev/null)")" = virtio_net ] && nic=${dev##*/} && break
done
[ -n "$nic" ] && ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" || fail "no network interface"
step "booted $(uname -r)"

# Real udev: vfiomond follows devices and modules through its events.
/lib/systemd/systemd-udevd --daemon >"$out/udevd.log" 2>&1 || fail "systemd-udevd did not start"
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=120 || step "udevadm settle timed out"
step "systemd-udevd running"

# The scenario "hotplug" loads the vfio modules and binds the devices itself,
# after vfiomond has started.
if [ "$scenario" = hotplug ]; then
    step "vfio modules left unloaded for the scenario"
else
    "$src/tests/lab/guest/bind.sh" || fail "binding the lab devices to vfio-pci"
fi

# A real journal for vfiomond's alerts (no systemd as PID 1 here).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/journal /var/log/journal
/lib/systemd/systemd-journald >"$out/journald.log" 2>&1 &
i=0
until [ -S /run/systemd/journal/socket ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || fail "systemd-journald did not start"
    sleep 0.1
done
step "systemd-journald running"

# A kernel without installed headers (the iommufd suite's own build): BCC reads
# them from the kheaders module.
[ -d "/lib/modules/$(uname -r)/build" ] || modprobe kheaders 2>/dev/null

export PYTHONPATH=$src PYTHONUNBUFFERED=1
python3 -m vfiomond check >"$out/check.txt" 2>&1
# doctor (as root and as nobody) is checked with the kernel-log scenario; elsewhere it
# would only add to every boot.
case "+$scenario+" in *+kernel-log+*) with_doctor=1 ;; *) with_doctor=0 ;; esac
if [ "$with_doctor" = 1 ]; then
    python3 -m vfiomond doctor --json >"$out/doctor.json" 2>"$out/doctor.err"
    echo $? >"$out/doctor.rc"
    setpriv --reuid=65534 --regid=65534 --clear-groups python3 -m vfiomond doctor --json >"$out/doctor-nobody.json" 2>"$out/doctor-nobody.err"
fi
# The symbols vfiomond looks for, as this kernel has them (for diagnosis, and the
# fixtures of tests/unit/data/kallsyms that scripts/coverage_table.py reads).
{ echo "# $(uname -r)"
  grep -E ' (vfio|iommufd|iopt|iommu_map$|do_update_pinned|__account_locked_vm|mm_lock_acct|remap_pfn_range|untrack_pfn|pfnmap_untrack|do_wp_page$|wake_up_new_task$|huge_zero_pfn$|dma_buf_invalidate_mappings$|dma_buf_move_notify$|(pci_try_reset_function|__pci_reset_function_locked|pci_reset_function|pci_reset_bus|pcie_reset_flr|pcie_flr|pci_af_flr|pci_pm_reset|pci_reset_bus_function|pci_dev_specific_reset|pci_dev_acpi_reset|cxl_reset_bus_function|pci_dev_reset_slot_function|pci_parent_bus_reset|dmar_fault)(\.[a-z]+\.[0-9]+)?$)' /proc/kallsyms \
    | sort -k3; } >"$out/kallsyms.txt"
# Whether this kernel can have iommufd at all, as kmod sees it (built in or a module).
modprobe -n iommufd 2>/dev/null && echo yes >"$out/iommufd-module" || echo no >"$out/iommufd-module"
step "vfiomond check (and doctor) done"
# A secured endpoint (TLS and basic auth) when the host wrote a web configuration
# (tests/lab/webtls.py); the scenarios then scrape with its credentials.
web_args=
if [ -f "$out/web/web.yml" ]; then
    web_args="--web.config.file $out/web/web.yml"
    export VFIOMOND_WEB="$out/web"
fi
# shellcheck disable=SC2086
python3 -m vfiomond run --config "$src/tests/lab/guest/vfiomond.toml" --listen ":$port" $web_args >"$out/vfiomond.log" 2>&1 &
daemon=$!
step "started vfiomond (pid $daemon)"
i=0
until grep -q "serving /metrics" "$out/vfiomond.log"; do
    kill -0 "$daemon" 2>/dev/null || fail "vfiomond exited: $(tail -n 1 "$out/vfiomond.log")"
    i=$((i + 1))
    [ $i -lt 600 ] || fail "vfiomond not ready after 300 s"
    sleep 0.5
done
step "vfiomond ready"
# The compiler's libraries' mappings in the daemon as the kernel counts them
# (vfiomond/footprint.py unmaps their clean pages after the compile): one line per
# mapping, "perms Rss-KiB Anonymous-KiB path".
awk '/^[0-9a-f]+-[0-9a-f]+ /{perms=$2; path=$6}
     /^Rss:/{rss=$2} /^Anonymous:/{if (path ~ /\/lib(LLVM|clang)[-.]/) print perms, rss, $2, path}' \
    "/proc/$daemon/smaps" >"$out/compiler-smaps"
# BPF run time and run counts (vfiomond_bpf_program_*), as an operator turns them on;
# not for the benchmark, whose figures would carry the cost of counting.
case "+$scenario+" in *+bench+*) ;; *) sysctl -q -w kernel.bpf_stats_enabled=1 || step "no kernel.bpf_stats_enabled" ;; esac

run_scenario() {  # NAME SUFFIX: output in scenario$SUFFIX.{json,log,rc}
    VFIOMOND_PID=$daemon VFIOMOND_PORT=$port VFIOMOND_HOLD=${hold:-0} python3 "$src/tests/lab/scenarios/$1.py" \
        >"$out/scenario$2.json" 2>"$out/scenario$2.log"
    echo $? >"$out/scenario$2.rc"
    step "scenario $1 exit $(cat "$out/scenario$2.rc")"
}
case "$scenario" in
*+*) for name in $(echo "$scenario" | tr '+' ' '); do run_scenario "$name" "-$name"; done ;;
*) run_scenario "$scenario" "" ;;
esac
if [ -x /lab/extra/run ]; then
    (cd /lab/extra && ./run) >"$out/extra.log" 2>&1
    echo $? >"$out/extra.rc"
    step "EXTRA run exit $(cat "$out/extra.rc")"
fi

# Pin verification's gauges (vfiomond_pin_samples, the per-process pin series) are as
# of its last pass, every second here: two passes before the host's scrape, so that
# it sees the scenario's processes gone (one scrape 1-3 s after the exit still had them).
sleep 2
journalctl -o json SYSLOG_IDENTIFIER=vfiomond >"$out/journal.json" 2>"$out/journalctl.log"
step "journal: $(wc -l <"$out/journal.json") vfiomond entries"
touch "$out/ready"
# The host scrapes now; it then creates "scraped" (or "stop" in demo mode).
i=0
until [ -e "$out/scraped" ] || [ -e "$out/stop" ]; do
    i=$((i + 1))
    [ "$demo" = 1 ] || [ $i -lt 600 ] || fail "no scrape from the host after 300 s"
    sleep 0.5
done
kill -TERM "$daemon"
wait "$daemon"
echo $? >"$out/vfiomond.rc"
step "vfiomond stopped, exit $(cat "$out/vfiomond.rc")"
touch "$out/done"
