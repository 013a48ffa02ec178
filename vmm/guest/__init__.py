"""What runs inside the guest, built on the host and cached by its inputs:

    kernel.py      the guest kernel, from Debian's linux-source and guest/kernel/config
    initramfs.py   the cpio writer and the test initramfs (guest/init/init.c as /init)
    agent.py       the guest agent (guest/agent/*.c) and its initramfs
    cache.py       the one keyed, locked cache directory they are all built into
    sources.py     where the guest sources are, and the error the builders raise
"""
