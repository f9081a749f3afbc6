#!/bin/sh
# PID 1 of the lab guest, exec'ed by /sbin/vfiomond-lab-init (tests/lab/image.sh)
# once /lab/src, /lab/out and /lab/extra are mounted.  The scenario "systemd"
# hands PID 1 over to systemd; every other scenario runs init.sh and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
scenario=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vfiomond\.scenario=//p')
if [ "$scenario" = systemd ]; then
    exec /lab/src/tests/lab/guest/systemd-boot.sh
fi
/lab/src/tests/lab/guest/init.sh
sync
echo o >/proc/sysrq-trigger
sleep 60
