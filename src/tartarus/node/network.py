"""Styx: a sandbox's network, for the `allowlist` and `open` modes.

`none` (the default) costs nothing here: the runtime gives the sandbox a fresh network
namespace with only a loopback. The other modes need a way out, so a sandbox gets a named
netns (`/run/netns/tsb-<hex>`) with a veth pair: `eth0` inside, `tsb<hex>` on the host, a /30
from 100.96.0.0/16 (the guest .2, the host .1 and the default route), set up with two
`ip -batch` calls. crun and runc join that netns through the bundle
(`ContainerConfig.netns`); gVisor starts inside it with `--network=host`. What it may reach
is the sandbox's nftables table (node/egress.py) and our DNS resolver on the host address
(node/dns.py, the sandbox's /etc/resolv.conf, bound read-only).

Addresses are allocated host-wide (not per state dir: several engines and test runs share
one kernel) as files created with O_EXCL under `TARTARUS_NET_DIR` (/run/tartarus-net, gone
at reboot like the netns themselves); `network.json` in the sandbox directory says which, so
another engine can tear it down or re-adopt it. The netns's bind mount lives in the engine's
private mount namespace (runtimes/hostns.py); the running container keeps the netns itself
alive, and a hibernated sandbox whose netns went with a dead engine gets it made again, same
addresses, before its wake (`ensure`). Teardown (`detach`) deletes the veth, the netns, the
table and the allocation, and is safe on partial setups and repeated calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import structlog

from tartarus.config import Settings
from tartarus.errors import ConflictError, InvalidRequestError, TartarusError
from tartarus.models import NetworkMode
from tartarus.node import egress
from tartarus.node.dns import Resolver, host_upstream, parse_upstream
from tartarus.node.egress import POOL, EgressRules
from tartarus.runtimes import spawn
from tartarus.runtimes.base import BindMount, GuestNetwork

log = structlog.get_logger("tartarus.styx")

SLOTS = POOL.num_addresses // 4
STALE_AFTER_S = 60.0
SWEEP_EVERY_S = 30.0
STATE_FILE = "network.json"
RESOLV_FILE = "resolv.conf"
NETNS_DIR = Path("/run/netns")


class NetworkError(TartarusError):
    """Setting up or changing a sandbox's network failed."""


def net_dir() -> Path:
    return Path(os.environ.get("TARTARUS_NET_DIR") or "/run/tartarus-net")


@dataclass(frozen=True)
class Attachment:
    sandbox_id: str
    slot: int
    mode: NetworkMode
    egress: tuple[str, ...]

    @property
    def hexid(self) -> str:
        return self.sandbox_id.removeprefix("sb-")[:12]

    @property
    def netns(self) -> str:
        return f"tsb-{self.hexid}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def iface(self) -> str:
        return iface_of(self.sandbox_id)

    @property
    def host_ip(self) -> str:
        return str(POOL.network_address + 4 * self.slot + 1)

    @property
    def guest_ip(self) -> str:
        return str(POOL.network_address + 4 * self.slot + 2)


def iface_of(sandbox_id: str) -> str:
    return f"{egress.IFACE_PREFIX}{sandbox_id.removeprefix('sb-')[:12]}"


def counters(sandbox_id: str) -> tuple[int, int] | None:
    """(rx_bytes, tx_bytes) the sandbox has received and sent over its veth since its start,
    or None when it has none (`none` mode, or ended). Read by Erinyes' network limit."""
    stats = Path("/sys/class/net") / iface_of(sandbox_id) / "statistics"
    try:  # the host side's tx is what the sandbox received
        rx = int((stats / "tx_bytes").read_text())
        tx = int((stats / "rx_bytes").read_text())
    except (OSError, ValueError):
        return None
    return rx, tx


def load(directory: Path) -> Attachment | None:
    """The attachment recorded in a sandbox directory, if any."""
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        return Attachment(
            data["sandbox_id"], int(data["slot"]), NetworkMode(data["mode"]), tuple(data["egress"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(directory: Path, att: Attachment) -> None:
    data = {"sandbox_id": att.sandbox_id, "slot": att.slot, "mode": att.mode.value}
    tmp = directory / f".{STATE_FILE}"
    tmp.write_text(json.dumps({**data, "egress": list(att.egress)}))
    tmp.replace(directory / STATE_FILE)


def _claim(sandbox_id: str, slot: int) -> bool:
    """Take `slot` for the sandbox (True if it is its own already)."""
    slots = net_dir() / "slots"
    slots.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(slots / str(slot), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with contextlib.suppress(OSError):
            return (slots / str(slot)).read_text() == sandbox_id
        return False
    with os.fdopen(fd, "w") as f:
        f.write(sandbox_id)
    return True


def _allocate(sandbox_id: str) -> int:
    """A free /30 of the pool, host-wide: whoever creates its file first owns it."""
    first = secrets.randbelow(SLOTS)
    for i in range(SLOTS):
        slot = (first + i) % SLOTS
        if slot in (0, SLOTS - 1):
            continue  # the pool's first and last /30 stay unused
        if _claim(sandbox_id, slot):
            return slot
    raise NetworkError(f"no free network address: all {SLOTS} sandbox subnets are in use")


async def sweep() -> None:
    """Remove what sandboxes of engines that died left behind: an allocation whose veth is
    gone (for a minute: a new one gets its veth within milliseconds), its stale netns file
    and its nftables table. A hibernated sandbox whose allocation went is given one again
    when it wakes (`Styx.ensure`)."""
    slots = net_dir() / "slots"
    held: set[str] = set()
    for path in slots.iterdir() if slots.is_dir() else ():
        try:
            sid, age = path.read_text(), time.time() - path.stat().st_mtime
        except OSError:
            continue
        if age < STALE_AFTER_S or Path(f"/sys/class/net/{iface_of(sid)}").exists():
            held.add(sid)
            continue
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (NETNS_DIR / f"tsb-{sid.removeprefix('sb-')[:12]}").unlink()
    code, out, _ = await spawn.run(["nft", "list", "tables"])
    held_tables = {egress.table_name(sid) for sid in held}
    for line in out.decode().splitlines() if code == 0 else ():
        table = line.split()[-1]
        if line.startswith("table inet tsb_") and table not in held_tables:
            iface = egress.IFACE_PREFIX + table.removeprefix("tsb_")[:12]
            if not Path(f"/sys/class/net/{iface}").exists():
                await spawn.run(["nft", "delete", "table", "inet", table])


def _release(att: Attachment) -> None:
    path = net_dir() / "slots" / str(att.slot)
    with contextlib.suppress(OSError):
        if path.read_text() == att.sandbox_id:  # never someone else's
            path.unlink()


def _netns_live(path: Path) -> bool:
    """Whether `path` is a netns bind mount in our mount namespace (not a stale file)."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except OSError:
        return False


async def _run(argv: list[str], what: str) -> None:
    code, _, err = await spawn.run(argv)
    if code != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise NetworkError(f"{what} failed: {lines[-1] if lines else f'exit {code}'}")


async def _batch(directory: Path, name: str, lines: list[str], prefix: list[str]) -> None:
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    try:
        await _run([*prefix, "-batch", str(path)], f"network setup ({prefix[0]})")
    finally:
        path.unlink(missing_ok=True)


class Styx:
    """The engine's networks: one attachment and one resolver per non-`none` sandbox."""

    def __init__(self, settings: Settings) -> None:
        up = settings.dns_upstream
        self.upstream = parse_upstream(up) if up else host_upstream()
        self.blocked: tuple[IPv4Network, ...] = egress.parse_blocked(settings.net_blocked)
        self._resolvers: dict[str, Resolver] = {}
        self._forwarding = False
        self._next_sweep = 0.0

    def validate(self, mode: NetworkMode, rules: tuple[str, ...]) -> EgressRules:
        parsed = egress.parse_rules(rules)
        if rules and mode != NetworkMode.ALLOWLIST:
            raise InvalidRequestError(
                f"egress rules need network mode 'allowlist', not {mode.value!r}"
            )
        return parsed

    # -- setup and teardown -------------------------------------------------------------------

    async def attach(
        self, sandbox_id: str, directory: Path, mode: NetworkMode, rules: tuple[str, ...]
    ) -> Attachment:
        """Allocate, set up and record the network of a new sandbox. On failure, whatever
        was made is the caller's `detach`'s to remove (the record is written first)."""
        parsed = self.validate(mode, rules)
        if time.monotonic() >= self._next_sweep:  # dead engines' leftovers, now and then
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            await sweep()
        att = Attachment(sandbox_id, _allocate(sandbox_id), mode, tuple(rules))
        try:
            _save(directory, att)
        except BaseException:
            _release(att)
            raise
        await self._setup(att, directory, parsed)
        return att

    async def _setup(self, att: Attachment, directory: Path, parsed: EgressRules) -> None:
        i, ns = att.iface, att.netns
        await _batch(
            directory,
            "net-host.batch",
            [
                f"netns add {ns}",
                f"link add {i} type veth peer name eth0 netns {ns}",
                f"link set {i} addrgenmode none",  # no IPv6 link-local towards the sandbox
                f"addr add {att.host_ip}/30 dev {i}",
                f"link set {i} up",
            ],
            ["ip"],
        )
        guest = _batch(
            directory,
            "net-guest.batch",
            [
                "link set lo up",
                "link set eth0 addrgenmode none",
                f"addr add {att.guest_ip}/30 dev eth0",
                "link set eth0 up",
                f"route add default via {att.host_ip}",
            ],
            ["ip", "-n", ns],
        )
        await self._ensure_forwarding(directory)
        # the inside and the rules at once (nothing runs in the netns yet); both end before
        # a failure is raised, so a teardown never races a late `nft` that remakes the table
        done = await asyncio.gather(
            guest, self._apply(att, directory, parsed), return_exceptions=True
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        (directory / RESOLV_FILE).write_text(
            f"nameserver {att.host_ip}\noptions timeout:2 attempts:2\n"
        )
        await self._serve_dns(att, parsed)

    async def detach(self, sandbox_id: str, directory: Path) -> list[str]:
        """Remove the sandbox's network, whatever of it exists; returns what failed."""
        resolver = self._resolvers.pop(sandbox_id, None)
        if resolver is not None:
            resolver.close()
        att = load(directory)
        if att is None:
            return []
        errors = []
        path = directory / "net-teardown.batch"
        try:  # -force: go on past parts that are already gone; both at once (each waits
            # for the kernel's RCU grace period, ~15-40 ms)
            path.write_text(f"link del {att.iface}\nnetns del {att.netns}\n")
            table = egress.table_name(sandbox_id)
            _, (code, _, err) = await asyncio.gather(
                spawn.run(["ip", "-force", "-batch", str(path)]),
                spawn.run(["nft", "delete", "table", "inet", table]),
            )
            path.unlink(missing_ok=True)
            if code != 0 and b"No such file" not in err:
                errors.append(f"nft: {err.decode(errors='replace').strip()}")
        except OSError as exc:
            errors.append(f"network: {exc}")
        if (NETNS_DIR / att.netns).exists() or Path(f"/sys/class/net/{att.iface}").exists():
            errors.append(f"network: {att.netns} or {att.iface} is still there")
        _release(att)
        with contextlib.suppress(OSError):
            (directory / STATE_FILE).unlink()
        return errors

    # -- while it runs ------------------------------------------------------------------------

    async def ensure(self, sandbox_id: str, directory: Path) -> Attachment | None:
        """Make sure a sandbox with a recorded network has it all (a re-adopted one, or one
        waking in a netns that went with the engine that hibernated it); None if it has none."""
        att = load(directory)
        if att is None:
            return None
        parsed = egress.parse_rules(att.egress)
        if not _netns_live(att.netns_path) and not Path(f"/sys/class/net/{att.iface}").exists():
            path = directory / "net-stale.batch"  # stale files from the engine that died
            path.write_text(f"netns del {att.netns}\n")
            await spawn.run(["ip", "-force", "-batch", str(path)])
            path.unlink(missing_ok=True)
            if not _claim(sandbox_id, att.slot):  # swept, and taken since: a new address
                att = Attachment(sandbox_id, _allocate(sandbox_id), att.mode, att.egress)
                _save(directory, att)
            await self._setup(att, directory, parsed)
            return att
        await self._ensure_forwarding(directory)
        await self._apply(att, directory, parsed)
        if sandbox_id not in self._resolvers:
            await self._serve_dns(att, parsed)
        return att

    async def set_rules(
        self, sandbox_id: str, directory: Path, mode: NetworkMode, rules: tuple[str, ...]
    ) -> Attachment:
        """Change a running sandbox's mode (allowlist <-> open) and rules. A `none` sandbox
        has no netns to change, and one cannot be taken away from a running process: both
        transitions are a conflict."""
        parsed = self.validate(mode, rules)
        att = load(directory)
        if att is None:
            raise ConflictError(
                f"sandbox {sandbox_id} was created with network 'none' and has no network"
                " to change; create it with --network allowlist or open"
            )
        if mode == NetworkMode.NONE:
            raise ConflictError(
                f"sandbox {sandbox_id} cannot switch to network 'none' while it exists;"
                " use --mode allowlist with no rules to cut it off"
            )
        new = Attachment(sandbox_id, att.slot, mode, tuple(rules))
        before = egress.parse_rules(att.egress)
        keep = (  # addresses resolved for a name no longer allowed must go
            att.mode == mode == NetworkMode.ALLOWLIST
            and before.names <= parsed.names
            and set(before.suffixes) <= set(parsed.suffixes)
        )
        await self._apply(new, directory, parsed, keep_dns=keep)
        _save(directory, new)
        resolver = self._resolvers.get(sandbox_id)
        if resolver is not None:
            resolver.rules = parsed if mode == NetworkMode.ALLOWLIST else None
            if not keep:
                resolver.forget()
        return new

    def container_parts(
        self, directory: Path
    ) -> tuple[Path | None, list[BindMount], GuestNetwork | None]:
        """The netns path, the resolv.conf bind and the addresses a sandbox's runtime gets."""
        att = load(directory)
        if att is None:
            return None, [], None
        guest = GuestNetwork(att.guest_ip, 30, att.host_ip, att.host_ip)
        return att.netns_path, [BindMount(directory / RESOLV_FILE, "/etc/resolv.conf")], guest

    def close(self) -> None:
        for resolver in self._resolvers.values():
            resolver.close()
        self._resolvers.clear()

    # -- internals ------------------------------------------------------------------------------

    async def _apply(
        self, att: Attachment, directory: Path, parsed: EgressRules, *, keep_dns: bool = True
    ) -> None:
        script = egress.ruleset(
            att.sandbox_id,
            att.iface,
            att.host_ip,
            att.mode.value,
            parsed,
            self.blocked,
            keep_dns=keep_dns,
        )
        path = directory / "net-rules.nft"
        path.write_text(script)
        try:
            await _run(["nft", "-f", str(path)], "nftables rules")
        finally:
            path.unlink(missing_ok=True)

    async def _serve_dns(self, att: Attachment, parsed: EgressRules) -> None:
        sid = att.sandbox_id

        async def allow(answers: list[tuple[str, int]]) -> None:
            await _run(["nft", egress.add_addresses(sid, answers)], "allowing resolved addresses")

        rules = parsed if att.mode == NetworkMode.ALLOWLIST else None
        old = self._resolvers.pop(sid, None)
        if old is not None:  # remade (`ensure`): its address is taken again below
            old.close()
        self._resolvers[sid] = await Resolver.serve(sid, att.host_ip, rules, self.upstream, allow)

    async def _ensure_forwarding(self, directory: Path) -> None:
        """IPv4 forwarding on, once: if it was off, first the guard (node/egress.py) that
        keeps it off for everything but sandbox veths."""
        if self._forwarding:
            return
        flag = Path("/proc/sys/net/ipv4/ip_forward")
        ours = net_dir() / "forwarding-enabled"
        if flag.read_text().strip() == "0" or ours.exists():
            path = directory / "net-guard.nft"
            path.write_text(egress.GUARD)
            try:
                await _run(["nft", "-f", str(path)], "forwarding guard")
            finally:
                path.unlink(missing_ok=True)
            ours.parent.mkdir(parents=True, exist_ok=True)
            ours.write_text(f"{time.time():.0f}\n")
            flag.write_text("1\n")
        self._forwarding = True
