"""``make bench``: vdpa-bench's data path and control path measured against DPDK in the same run."""
