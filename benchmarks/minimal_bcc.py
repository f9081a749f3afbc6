#!/usr/bin/env python3
"""The reference for vfiomond's footprint: a minimal BCC program on the same kernel functions.

Attaches a kprobe and a kretprobe to each SYMBOL (only the kprobe with
SYMBOL:entry, only the kretprobe with SYMBOL:return), each adding 1 to an array
slot (the least a BCC tool can do there), prints "attached N" once attached,
and sleeps until SIGTERM/SIGINT.  benchmarks/bench.py (via the lab's bench
scenario) compares its start-up time, resident memory, CPU and in-kernel time
with vfiomond's on the same workload; with vfiomond's own attach points
(SYMBOL:entry where vfiomond has no return program) it is the floor of any
tool that hooks them: the BPF time of an empty program on each.

    python3 benchmarks/minimal_bcc.py SYMBOL[:entry|:return] [...]
"""

import signal
import sys
import time

from bcc import BPF

TEXT = """
BPF_ARRAY(calls, u64, 64);
static __always_inline int count(int slot)
{
    u64 *v = calls.lookup(&slot);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""
FN = """
int enter_%(i)d(struct pt_regs *ctx) { return count(%(i)d * 2); }
int leave_%(i)d(struct pt_regs *ctx) { return count(%(i)d * 2 + 1); }
"""


def main(symbols):
    if not symbols:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    bad = [arg for arg in symbols if arg.partition(":")[2] not in ("", "entry", "return")]
    if bad:
        print("minimal_bcc: not SYMBOL, SYMBOL:entry or SYMBOL:return: %s" % " ".join(bad), file=sys.stderr)
        return 2
    bpf = BPF(text=TEXT + "".join(FN % {"i": i} for i in range(len(symbols))))
    for i, arg in enumerate(symbols):
        symbol, _, kind = arg.partition(":")
        if kind in ("", "entry"):
            bpf.attach_kprobe(event=symbol, fn_name="enter_%d" % i)
        if kind in ("", "return"):
            bpf.attach_kretprobe(event=symbol, fn_name="leave_%d" % i)
    print("attached %d" % len(symbols), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    bpf.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
