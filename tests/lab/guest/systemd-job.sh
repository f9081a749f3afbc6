#!/bin/sh
# The lab's job under systemd as PID 1 (scenario "systemd", a unit written by
# systemd-boot.sh): install vfiomond the way an operator does (scripts/install.sh),
# run scenarios/systemd.py against the unit, hand the host a scrape, power off.
set -u
src=/lab/src
out=/lab/out
step() { echo "lab: $*"; echo "$*" >>"$out/steps"; }
fail() { step "FAILED: $*"; echo "$*" >"$out/failed"; systemctl poweroff --no-block; exit 1; }

step "booted $(uname -r), PID 1 is $(cat /proc/1/comm) ($(systemctl --version | head -n 1))"
hostname vfiomond-lab
ip link set lo up
modprobe virtio_net
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
[ -n "$nic" ] && ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" || fail "no network interface"
udevadm settle --timeout=120 || step "udevadm settle timed out"
"$src/tests/lab/guest/bind.sh" || fail "binding the lab devices to vfio-pci"

"$src/scripts/install.sh" >"$out/install.log" 2>&1 || fail "scripts/install.sh: $(tail -n 1 "$out/install.log")"
step "installed: $(tail -n 1 "$out/install.log")"
# The lab's one change to the shipped unit: a short watchdog, so that the
# scenario can see it fire; and a short abort timeout for the stopped process.
mkdir -p /etc/systemd/system/vfiomond.service.d
cat >/etc/systemd/system/vfiomond.service.d/lab.conf <<CONF
[Service]
WatchdogSec=20s
TimeoutAbortSec=5s
CONF
systemctl daemon-reload

python3 "$src/tests/lab/scenarios/systemd.py" >"$out/scenario.json" 2>"$out/scenario.log"
echo $? >"$out/scenario.rc"
step "scenario systemd exit $(cat "$out/scenario.rc")"
journalctl -o json SYSLOG_IDENTIFIER=vfiomond >"$out/journal.json" 2>"$out/journalctl.log"
journalctl -u vfiomond --no-pager -o cat >"$out/vfiomond.log" 2>&1
journalctl -k -o json >"$out/kernel-journal.json" 2>&1
step "journal: $(wc -l <"$out/journal.json") vfiomond entries"
touch "$out/ready"
i=0
until [ -e "$out/scraped" ] || [ -e "$out/stop" ]; do
    i=$((i + 1))
    [ $i -lt 600 ] || fail "no scrape from the host after 300 s"
    sleep 0.5
done
systemctl stop vfiomond
systemctl show -p ExecMainStatus --value vfiomond >"$out/vfiomond.rc"
step "vfiomond stopped, exit $(cat "$out/vfiomond.rc"), $(systemctl show -p ActiveState --value vfiomond)"
journalctl -u vfiomond --no-pager -o cat >"$out/vfiomond.log" 2>&1
touch "$out/done"
systemctl poweroff --no-block
