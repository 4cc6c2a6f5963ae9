"""A microVM's NIC, and how it joins the sandbox's network namespace (Styx).

Every VM has one virtio-net NIC, whatever its network mode: a clone's devices must be
exactly its template's, and one template serves sandboxes of every mode. In mode `none` the
NIC's backend is a hub port with nothing else on the hub (QEMU warns "hub 0 is not connected
to host network", which is the point) and the guest leaves it down.

With a network, Styx has made the sandbox's netns with a veth (`eth0` inside, the host side
filtered by its nftables table, the DNS resolver on the host address). A container joins
that netns and uses `eth0`; a VM has its own kernel, so QEMU runs inside the netns and the
netns becomes a wire: `eth0` and a tap `tap0` (QEMU's backend) in a bridge, no address of
their own. The guest's NIC takes the sandbox's address (guest/nic.py, from the HELLO),
and everything Styx does on the host side holds unchanged: same address, rules, resolver,
byte counters. The tap outlives QEMU (a hibernated VM wakes onto it) and goes with the
netns when Styx removes it.
"""

from __future__ import annotations

from pathlib import Path

from tartarus.errors import RuntimeUnavailableError
from tartarus.runtimes import spawn

NIC = "net0"
TAP = "tap0"
BRIDGE = "br0"
VETH = "eth0"  # Styx's name inside the netns


def qemu_args(netns: Path | None) -> list[str]:
    if netns is None:
        backend = f"hubport,id={NIC},hubid=0"
    else:  # opened before QEMU drops to its uid
        backend = f"tap,id={NIC},ifname={TAP},script=no,downscript=no"
    return ["-netdev", backend, "-device", f"virtio-net-device,netdev={NIC}"]


def enter(netns: Path | None) -> list[str]:
    """The prefix that starts QEMU inside the sandbox's netns (none: the host's, where
    it opens no socket but its unix ones)."""
    return [] if netns is None else ["nsenter", f"--net={netns}", "--"]


async def wire(netns: Path, directory: Path) -> None:
    """Bridge a tap for QEMU to the netns's veth, once (a waking VM finds it done)."""
    inside = [*enter(netns), "ip"]
    rc, _, _ = await spawn.run([*inside, "link", "show", TAP])
    if rc == 0:
        return
    batch = directory / "net-wire.batch"
    batch.write_text(
        "\n".join(
            [
                f"addr flush dev {VETH}",  # the VM's address, not the netns's
                f"tuntap add dev {TAP} mode tap",
                f"link add {BRIDGE} type bridge",
                *(f"link set {i} addrgenmode none" for i in (TAP, BRIDGE)),
                *(f"link set {i} master {BRIDGE}" for i in (VETH, TAP)),
                *(f"link set {i} up" for i in (TAP, BRIDGE)),
            ]
        )
        + "\n"
    )
    try:
        rc, _, err = await spawn.run([*inside, "-batch", str(batch)])
    finally:
        batch.unlink(missing_ok=True)
    if rc != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeUnavailableError(
            f"microvm: cannot wire the VM into its network: {lines[-1] if lines else rc}"
        )
