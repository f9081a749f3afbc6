#!/usr/bin/env python3
"""The reference for vfiomond's footprint: a minimal BCC program on the same kernel functions.

Attaches a kprobe and a kretprobe to each SYMBOL, or what its METHODS say:
"+"-joined kprobe, kretprobe, fentry, fexit, as `vfiomond check --json` names
a hook's methods ("entry" and "return" stand for kprobe and kretprobe).  Each
program adds 1 to an array slot (the least a BCC tool can do there).  It prints
"attached N" once attached, and sleeps until SIGTERM/SIGINT.
benchmarks/bench.py (via the lab's bench scenario) compares its start-up time,
resident memory, CPU and in-kernel time with vfiomond's on the same workload;
with vfiomond's own attach points and methods it is the floor of any tool that
hooks them: the BPF time of an empty program on each.

    python3 benchmarks/minimal_bcc.py SYMBOL[:METHODS] [...]

fentry/fexit on a module's function need BCC 0.28+ (MODULE_KFUNC_PROBE); the
module is read from /proc/kallsyms.
"""

import signal
import sys
import time

from bcc import BPF

TEXT = """
BPF_ARRAY(calls, u64, 256);
static __always_inline int count(int slot)
{
    u64 *v = calls.lookup(&slot);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""
KPROBES = """
int enter_%(i)d(struct pt_regs *ctx) { return count(%(i)d * 2); }
int leave_%(i)d(struct pt_regs *ctx) { return count(%(i)d * 2 + 1); }
"""
# BCC names these kfunc__[MODULE__]SYMBOL and attaches them as it loads them.  One
# argument declared: BCC 0.18's KFUNC_PROBE does not compile without one.
TRAMPOLINE = "%(macro)s(%(where)s, u64 arg0) { return count(%(slot)d); }\n"
METHODS = {"kprobe", "kretprobe", "fentry", "fexit"}
ALIASES = {"": "kprobe+kretprobe", "entry": "kprobe", "return": "kretprobe"}


def parse(args):
    """[(symbol, {method...})], or raise ValueError naming the bad arguments."""
    hooks, bad = [], []
    for arg in args:
        symbol, _, methods = arg.partition(":")
        wanted = set(ALIASES.get(methods, methods).split("+"))
        if symbol and wanted <= METHODS:
            hooks.append((symbol, wanted))
        else:
            bad.append(arg)
    if bad:
        raise ValueError("not SYMBOL[:METHODS] (kprobe, kretprobe, fentry, fexit joined by +): %s" % " ".join(bad))
    return hooks


def modules(symbols):
    """symbol -> its module ("" for vmlinux), from /proc/kallsyms."""
    found = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] in symbols:
                found.setdefault(fields[2], fields[3].strip("[]") if len(fields) > 3 else "")
    return found


def source(hooks):
    """The program text: per hook, kprobe programs enter_I/leave_I or fentry/fexit
    programs, each counting into slot 2I (entry) or 2I + 1 (return)."""
    text = [TEXT]
    module_of = modules({s for s, m in hooks if m & {"fentry", "fexit"}})
    for i, (symbol, methods) in enumerate(hooks):
        if methods & {"kprobe", "kretprobe"}:
            text.append(KPROBES % {"i": i})
        for method, macro, slot in (("fentry", "KFUNC_PROBE", 2 * i), ("fexit", "KRETFUNC_PROBE", 2 * i + 1)):
            if method not in methods:
                continue
            module = module_of.get(symbol, "")
            where = "%s, %s" % (module, symbol) if module else symbol
            text.append(TRAMPOLINE % {"macro": ("MODULE_" if module else "") + macro, "where": where, "slot": slot})
    return "".join(text)


def main(args):
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        hooks = parse(args)
    except ValueError as e:
        print("minimal_bcc: %s" % e, file=sys.stderr)
        return 2
    bpf = BPF(text=source(hooks))
    for i, (symbol, methods) in enumerate(hooks):
        if "kprobe" in methods:
            bpf.attach_kprobe(event=symbol, fn_name="enter_%d" % i)
        if "kretprobe" in methods:
            bpf.attach_kretprobe(event=symbol, fn_name="leave_%d" % i)
    print("attached %d" % len(hooks), flush=True)
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
