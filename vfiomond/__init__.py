"""vfiomond: a Prometheus exporter for the kernel's VFIO paths, built on eBPF (BCC)."""

__version__ = "0.1.0"
