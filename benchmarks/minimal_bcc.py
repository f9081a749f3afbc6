#!/usr/bin/env python3
"""The reference for vfiomond's footprint: a minimal BCC program on the same kernel functions.

Attaches a kprobe and a kretprobe to each SYMBOL, each adding 1 to an array
slot (the least a BCC tool can do there), prints "attached N" once attached,
and sleeps until SIGTERM/SIGINT.  benchmarks/bench.py (via the lab's bench
scenario) compares its start-up time, resident memory, CPU and in-kernel time
with vfiomond's on the same workload.

    python3 benchmarks/minimal_bcc.py SYMBOL [SYMBOL ...]
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
    bpf = BPF(text=TEXT + "".join(FN % {"i": i} for i in range(len(symbols))))
    for i, symbol in enumerate(symbols):
        bpf.attach_kprobe(event=symbol, fn_name="enter_%d" % i)
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
