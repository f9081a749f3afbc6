#!/bin/sh
# Scenario "systemd": prepare the lab job as a unit, then hand PID 1 to systemd.
# The root file system is a throw-away snapshot (qemu -snapshot).
set -u
units=/etc/systemd/system
mkdir -p "$units/multi-user.target.wants"
cat >"$units/vfiomond-lab.service" <<UNIT
[Unit]
Description=vfiomond lab job (scenario systemd)
After=systemd-udevd.service systemd-udev-trigger.service systemd-journald.service
Wants=systemd-udev-trigger.service

[Service]
Type=oneshot
ExecStart=/lab/src/tests/lab/guest/systemd-job.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
UNIT
ln -sf ../vfiomond-lab.service "$units/multi-user.target.wants/vfiomond-lab.service"
# Nothing in the lab logs in or updates packages.
for unit in serial-getty@.service getty@.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sf /dev/null "$units/$unit"
done
echo "lab: handing PID 1 to systemd"
exec /lib/systemd/systemd
