"""The nested tier: real KVM inside an L1 Linux under QEMU TCG (emulated AMD SVM).

/dev/kvm on the development and CI machines is a software hypervisor on which a Linux
guest cannot reach userspace (docs/platform.md). QEMU's TCG emulates AMD SVM with nested
paging, and inside an L1 Linux booted under it `/dev/kvm` behaves like hardware KVM, so
the kvm engine's real-Linux tests run there:

- l1_kernel.py     Debian's generic kernel package, downloaded and unpacked, cached
- l1_initramfs.py  busybox + the modules L1 needs + our init script, cached by its inputs
- runner.py        boots L1 with the host's root shared read-only over 9p, runs a pytest
                   selection or commands inside it, and brings back each test's outcome
                   or the files the commands wrote
"""
