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
# Whether this kernel can have iommufd at all, as kmod sees it (built in or a module).
modprobe -n iommufd 2>/dev/null && echo yes >"$out/iommufd-module" || echo no >"$out/iommufd-module"

# The lab's one change to the shipped unit: a short watchdog, so that the
# scenario can see it fire; and a short abort timeout for the stopped process.
# Written first: the package starts the unit when it is installed.
mkdir -p /etc/systemd/system/vfiomond.service.d
cat >/etc/systemd/system/vfiomond.service.d/lab.conf <<CONF
[Service]
WatchdogSec=20s
TimeoutAbortSec=5s
CONF
# The package the host built (tests/lab/lab.py build_packages); the guest has no
# network: its dependencies are in the image.
deb=$(ls "$out"/deb/vfiomond_*_all.deb 2>/dev/null | grep -v '+rebuild' | head -n 1)
[ -n "$deb" ] || fail "no package in $out/deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$deb" >"$out/install.log" 2>&1 \
    || fail "apt-get install $(basename "$deb"): $(tail -n 1 "$out/install.log")"
systemctl is-enabled vfiomond >"$out/enabled-after-install" 2>&1
systemctl is-active vfiomond >"$out/active-after-install" 2>&1
step "installed $(dpkg-query -W -f='${Package} ${Version}' vfiomond): $(cat "$out/enabled-after-install"), $(cat "$out/active-after-install")"

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
# The package's life after the scrape: an upgrade to a rebuilt one restarts the running
# daemon and keeps the edited conffile; then the daemon stops; a purge leaves nothing.
python3 "$src/tests/lab/scenarios/systemd.py" upgrade "$out/deb" >"$out/package-upgrade.json" 2>>"$out/scenario.log"
step "package upgraded: exit $?"
systemctl stop vfiomond
systemctl show -p ExecMainStatus --value vfiomond >"$out/vfiomond.rc"
step "vfiomond stopped, exit $(cat "$out/vfiomond.rc"), $(systemctl show -p ActiveState --value vfiomond)"
journalctl -u vfiomond --no-pager -o cat >"$out/vfiomond.log" 2>&1
python3 "$src/tests/lab/scenarios/systemd.py" purge >"$out/package-purge.json" 2>>"$out/scenario.log"
step "package purged: exit $?"
touch "$out/done"
systemctl poweroff --no-block
