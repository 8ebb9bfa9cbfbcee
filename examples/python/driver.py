#!/usr/bin/python3
"""A device driver written in Python against mmsimd, with stubs generated from the protos.

The script plays a driver (say a GPU driver) and the process it serves:
it opens a session that lives while its AttachSession stream is open,
creates a process (mm), maps and touches memory, forks, takes a fault,
exposes a device BAR through a VM_PFNMAP mapping filled with
vmf_insert_pfn_range, pins a buffer long-term, mirrors it on a device
(Subscribe stream, interval notifier, hmm_range_fault) and acknowledges the
invalidation of its munmap, inspects the result, and closes the session.

Stubs are generated into examples/python/gen/ (git-ignored) on first run with
Debian's protoc and grpc_python_plugin:

    apt-get install -y python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc
    /usr/bin/python3 examples/python/driver.py --addr 127.0.0.1:50051

Exit status: 0 when every step behaved as expected, 1 otherwise.
"""

import argparse
import glob
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
GEN_DIR = os.path.join(HERE, "gen")

MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x1, 0x2, 0x20
PROT_READ, PROT_WRITE = 0x1, 0x2
MiB = 1 << 20


def ensure_stubs():
    """Generate the Python stubs into gen/ unless they are newer than every .proto."""
    protos = sorted(glob.glob(os.path.join(PROTO_DIR, "mmsim", "v1", "*.proto")))
    if not protos:
        sys.exit(f"driver.py: no protos under {PROTO_DIR}")
    stamp = os.path.join(GEN_DIR, ".stamp")
    newest = max(os.path.getmtime(p) for p in protos)
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= newest:
        return
    protoc = shutil.which("protoc") or "/usr/bin/protoc"
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    for tool in (protoc, plugin):
        if not os.path.exists(tool):
            sys.exit(f"driver.py: {tool} not found; apt-get install -y protobuf-compiler protobuf-compiler-grpc")
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=HERE)
    try:
        subprocess.run([protoc, f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_out={tmp}",
                        f"--plugin=protoc-gen-grpc={plugin}", *protos], check=True)
        open(os.path.join(tmp, ".stamp"), "w").close()
        old = GEN_DIR + ".old-" + str(os.getpid())
        if os.path.exists(GEN_DIR):
            os.rename(GEN_DIR, old)
        try:
            os.rename(tmp, GEN_DIR)
        except OSError:
            pass  # another run installed its copy first: use that one
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


ensure_stubs()
sys.path.insert(0, GEN_DIR)

import grpc  # noqa: E402
from mmsim.v1 import address_space_pb2 as asp  # noqa: E402
from mmsim.v1 import address_space_pb2_grpc as asp_grpc  # noqa: E402
from mmsim.v1 import common_pb2  # noqa: E402
from mmsim.v1 import device_pb2, device_pb2_grpc  # noqa: E402
from mmsim.v1 import fault_pb2, fault_pb2_grpc  # noqa: E402
from mmsim.v1 import gup_pb2, gup_pb2_grpc  # noqa: E402
from mmsim.v1 import hmm_pb2, hmm_pb2_grpc  # noqa: E402
from mmsim.v1 import inspect_pb2, inspect_pb2_grpc  # noqa: E402
from mmsim.v1 import memory_pb2, memory_pb2_grpc  # noqa: E402
from mmsim.v1 import notifier_pb2, notifier_pb2_grpc  # noqa: E402
from mmsim.v1 import session_pb2, session_pb2_grpc  # noqa: E402
from mmsim.v1 import system_pb2, system_pb2_grpc  # noqa: E402


class Failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failed(what)


def errno_of(err):
    """The kernel errno of a failed call, from the mmsim-errno-name trailer."""
    for k, v in err.trailing_metadata() or ():
        if k == "mmsim-errno-name":
            return v
    return err.code().name


class Mirror:
    """A device mirror: a Subscribe stream whose invalidations are acknowledged at once."""

    def __init__(self, stub, md):
        self.requests = queue.Queue()
        self.requests.put(notifier_pb2.SubscribeRequest(open=notifier_pb2.SubscribeOpen(name="python-gpu")))
        self.acked = []
        self.status = None
        self.opened = threading.Event()
        self.done = threading.Event()
        self.mirror_id = 0
        self.stream = stub.Subscribe(iter(self.requests.get, None), metadata=md)
        threading.Thread(target=self._read, daemon=True).start()
        expect(self.opened.wait(10) and self.mirror_id != 0, f"Subscribe sent no first message (stream {self.status})")

    def _read(self):
        try:
            for msg in self.stream:
                kind = msg.WhichOneof("event")
                if kind == "subscribed":
                    self.mirror_id = msg.subscribed.mirror_id
                    self.opened.set()
                elif kind == "invalidations":
                    # Here a real driver would clear its device page table for
                    # [start, end) and flush its TLB, then acknowledge.
                    batch = list(msg.invalidations.invalidations)
                    self.acked.extend(batch)
                    self.requests.put(notifier_pb2.SubscribeRequest(ack=notifier_pb2.InvalidationAck(
                        invalidation_ids=[i.invalidation_id for i in batch])))
                elif kind == "dead":
                    self.status = "DEAD: " + msg.dead.reason
            if self.status is None:
                self.status = "OK"
        except grpc.RpcError as e:
            self.status = e.code().name
        finally:
            self.opened.set()
            self.done.set()

    def close(self):
        """Half-closes the stream; the daemon removes the mirror and ends it."""
        self.requests.put(None)
        expect(self.done.wait(10), "the mirror stream did not end")


class Driver:
    def __init__(self, addr):
        # Keepalive: the daemon notices a dead driver (and ends its session)
        # and the driver notices a dead daemon, even on an idle stream.
        self.channel = grpc.insecure_channel(addr, options=[
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.aspace = asp_grpc.AddressSpaceServiceStub(self.channel)
        self.faults = fault_pb2_grpc.FaultServiceStub(self.channel)
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.device = device_pb2_grpc.DeviceServiceStub(self.channel)
        self.inspect = inspect_pb2_grpc.InspectServiceStub(self.channel)
        self.system = system_pb2_grpc.SystemServiceStub(self.channel)
        self.gup = gup_pb2_grpc.GupServiceStub(self.channel)
        self.notifier = notifier_pb2_grpc.NotifierServiceStub(self.channel)
        self.hmm = hmm_pb2_grpc.HmmServiceStub(self.channel)
        self.md = None
        self.notices = []
        self.attached = threading.Event()
        self.stream_done = threading.Event()
        self.stream_status = None

    # -------------------------------------------------------------- session

    def open_session(self):
        """A non-persistent session: it lives while the AttachSession stream is open."""
        sid = self.sessions.CreateSession(session_pb2.CreateSessionRequest(name="python-driver", persistent=False)).session_id
        self.md = (("mmsim-session", str(sid)),)
        self.stream = self.sessions.AttachSession(session_pb2.AttachSessionRequest(session_id=sid))
        threading.Thread(target=self._read_notices, daemon=True).start()
        expect(self.attached.wait(10), "AttachSession sent no first message")
        return sid

    def _read_notices(self):
        try:
            for msg in self.stream:
                if msg.WhichOneof("event") == "attached":
                    self.attached.set()
                else:
                    self.notices.append(msg.notice)
            self.stream_status = "OK"
        except grpc.RpcError as e:
            self.stream_status = e.code().name
        finally:
            self.stream_done.set()

    # ----------------------------------------------------------------- run

    def run(self):
        v = self.system.GetVersion(system_pb2.GetVersionRequest())
        print(f"connected to mmsimd {v.version} (Linux {v.kernel_baseline} model, {v.api})")

        sid = self.open_session()
        print(f"session {sid} attached")

        mm = self.aspace.CreateMm(asp.CreateMmRequest(name="python-proc"), metadata=self.md).mm_id
        addr = self.aspace.Mmap(asp.MmapRequest(mm_id=mm, length=4 * MiB, prot=PROT_READ | PROT_WRITE,
                                                flags=MAP_PRIVATE | MAP_ANONYMOUS), metadata=self.md).addr
        print(f"mm {mm}: 4 MiB of anonymous memory at {addr:#x}")

        text = b"hello from python"
        w = self.memory.WriteMemory(memory_pb2.WriteMemoryRequest(mm_id=mm, addr=addr, data=text), metadata=self.md)
        r = self.memory.ReadMemory(memory_pb2.ReadMemoryRequest(mm_id=mm, addr=addr, length=len(text)), metadata=self.md)
        expect(w.bytes_done == len(text) and r.data == text, f"read back {r.data!r}")
        print(f"wrote and read back {r.data.decode()!r}")

        f = self.faults.HandleMmFault(fault_pb2.HandleMmFaultRequest(
            mm_id=mm, addr=addr + 2 * MiB, access=fault_pb2.FAULT_ACCESS_WRITE), metadata=self.md)
        level = common_pb2.PageTableLevel.Name(f.level).replace("PAGE_TABLE_LEVEL_", "")
        expect(f.vm_fault == 0 and f.writable, f"write fault: vm_fault {f.vm_fault:#x}")
        print(f"write fault at {addr + 2 * MiB:#x}: {level} leaf, pfn {f.pfn:#x}, thp={f.thp}")

        child = self.aspace.ForkMm(asp.ForkMmRequest(mm_id=mm), metadata=self.md).child_mm_id
        self.memory.WriteMemory(memory_pb2.WriteMemoryRequest(mm_id=child, addr=addr, data=b"hello from child!"), metadata=self.md)
        p = self.memory.ReadMemory(memory_pb2.ReadMemoryRequest(mm_id=mm, addr=addr, length=len(text)), metadata=self.md).data
        c = self.memory.ReadMemory(memory_pb2.ReadMemoryRequest(mm_id=child, addr=addr, length=len(text)), metadata=self.md).data
        expect(p == text and c == b"hello from child!", f"after COW parent {p!r} child {c!r}")
        print(f"fork: child mm {child}; after the child's write (COW) parent reads {p.decode()!r}, child reads {c.decode()!r}")

        # A device BAR without struct pages, mapped VM_PFNMAP by the driver's
        # ->mmap and filled by vmf_insert_pfn_range with the largest leaves.
        bar = self.device.RegisterPfnRange(device_pb2.RegisterPfnRangeRequest(name="python-bar0", nr_pages=1024), metadata=self.md)
        dev = self.aspace.Mmap(asp.MmapRequest(
            mm_id=mm, length=4 * MiB, prot=PROT_READ | PROT_WRITE, flags=MAP_SHARED,
            device=asp.DeviceMmap(kind=asp.DEVICE_MAPPING_PFNMAP, pfn_range_id=bar.pfn_range_id, huge_fault=True)),
            metadata=self.md).addr
        ins = self.device.InsertPfnRange(device_pb2.InsertPfnRangeRequest(
            mm_id=mm, addr=dev, pfn=bar.pfn_start, nr_pages=1024, mode=device_pb2.INSERT_MODE_EAGER), metadata=self.md)
        expect(ins.errno_value == 0 and ins.pmd_leaves == 2, f"insert: errno {ins.errno_value}, {ins.pmd_leaves} PMD leaves")
        print(f"BAR pfn {bar.pfn_start:#x}+1024 mapped at {dev:#x}: {ins.pmd_leaves} PMD leaves, {ins.pte_leaves} PTE leaves")

        try:
            self.aspace.Munmap(asp.MunmapRequest(mm_id=mm, addr=addr + 1, length=4096), metadata=self.md)
            raise Failed("munmap of an unaligned address succeeded")
        except grpc.RpcError as e:
            print(f"munmap({addr + 1:#x}) failed as the kernel would: {errno_of(e)} ({e.details()})")

        # Pinning, as an RDMA driver registers a buffer: a fresh 2 MiB buffer,
        # populated, pinned long-term for writing (pin_user_pages with
        # FOLL_WRITE|FOLL_LONGTERM), reported as PFN ranges; then unpinned.
        FOLL_WRITE, FOLL_LONGTERM, MADV_POPULATE_WRITE = 0x1, 0x100, 23
        buf = self.aspace.Mmap(asp.MmapRequest(mm_id=mm, length=2 * MiB, prot=PROT_READ | PROT_WRITE,
                                               flags=MAP_PRIVATE | MAP_ANONYMOUS), metadata=self.md).addr
        self.aspace.Madvise(asp.MadviseRequest(mm_id=mm, addr=buf, length=2 * MiB, advice=MADV_POPULATE_WRITE), metadata=self.md)
        pin = self.gup.PinUserPages(gup_pb2.PinUserPagesRequest(
            variant=gup_pb2.GUP_VARIANT_PIN_USER_PAGES, mm_id=mm, start=buf, nr_pages=512,
            gup_flags=FOLL_WRITE | FOLL_LONGTERM, output=gup_pb2.GUP_OUTPUT_RANGES), metadata=self.md)
        expect(pin.ret == 512 and pin.handle != 0, f"pin_user_pages returned {pin.ret}")
        ranges = ", ".join(f"pfn {r.pfn:#x}+{r.count}" for r in pin.ranges)
        print(f"pinned 512 pages long-term at {buf:#x} (handle {pin.handle}): {ranges}")
        un = self.gup.UnpinHandle(gup_pb2.UnpinHandleRequest(handle=pin.handle, make_dirty=True), metadata=self.md)
        ps = self.gup.GetPinStats(gup_pb2.GetPinStatsRequest())
        expect(un.released.pages == 512 and ps.outstanding_pins == 0, f"unpinned {un.released.pages}, {ps.outstanding_pins} outstanding")
        print(f"unpinned {un.released.pages} pages; nr_foll_pin_acquired {ps.nr_foll_pin_acquired}"
              f" == nr_foll_pin_released {ps.nr_foll_pin_released}")
        # A device mirror of the buffer, as a GPU driver keeps one (HMM): a
        # Subscribe stream carries the MMU-notifier invalidations to this
        # process, which tears its device mapping down and acknowledges; the
        # daemon's munmap waits for that acknowledgement, as the kernel waits
        # for invalidate_range_start.
        mirror = Mirror(self.notifier, self.md)
        note = self.notifier.InsertIntervalNotifier(notifier_pb2.InsertIntervalNotifierRequest(
            mirror_id=mirror.mirror_id, mm_id=mm, start=buf, length=2 * MiB), metadata=self.md)
        seq = self.notifier.ReadBegin(notifier_pb2.ReadBeginRequest(notifier_id=note.notifier_id), metadata=self.md).seq
        HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE = 0x80000000, 0x40000000
        hf = self.hmm.HmmRangeFault(hmm_pb2.HmmRangeFaultRequest(
            notifier_id=note.notifier_id, notifier_seq=seq, start=buf, end=buf + 2 * MiB,
            default_flags=HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE, output=hmm_pb2.HMM_OUTPUT_COMPACT), metadata=self.md)
        expect(hf.errno_value == 0 and len(hf.runs) >= 1, f"hmm_range_fault: errno {hf.errno_value}, {len(hf.runs)} runs")
        retry = self.notifier.ReadRetry(notifier_pb2.ReadRetryRequest(notifier_id=note.notifier_id, seq=seq), metadata=self.md).retry
        expect(not retry, "mmu_interval_read_retry reported a change with nothing running")
        runs = ", ".join(f"pfn {r.pfn:#x}+{r.nr_pages} order {r.order}" for r in hf.runs)
        print(f"mirrored {buf:#x}+2 MiB (notifier {note.notifier_id}): hmm_range_fault {len(hf.runs)} run(s): {runs}")

        self.aspace.Munmap(asp.MunmapRequest(mm_id=mm, addr=buf, length=2 * MiB), metadata=self.md)
        # Munmap has returned, so its invalidation was received and acknowledged.
        inv = mirror.acked
        expect(len(inv) == 1, f"{len(inv)} invalidations for one munmap")
        ev = notifier_pb2.MmuNotifyEvent.Name(inv[0].event).replace("MMU_NOTIFY_EVENT_", "")
        expect(ev == "UNMAP" and inv[0].start == buf and inv[0].end == buf + 2 * MiB and list(inv[0].notifier_ids) == [note.notifier_id],
               f"invalidation {inv[0]}")
        retry = self.notifier.ReadRetry(notifier_pb2.ReadRetryRequest(notifier_id=note.notifier_id, seq=seq), metadata=self.md).retry
        expect(retry, "mmu_interval_read_retry missed the munmap")
        print(f"munmap invalidated the mirror: {ev} {inv[0].start:#x}-{inv[0].end:#x} seq {inv[0].seq}, acknowledged; read_retry={retry}")
        self.notifier.RemoveIntervalNotifier(notifier_pb2.RemoveIntervalNotifierRequest(notifier_id=note.notifier_id), metadata=self.md)
        mirror.close()
        expect(mirror.status == "OK", f"mirror stream ended {mirror.status}")

        maps = self.inspect.GetMaps(inspect_pb2.GetMapsRequest(mm_id=mm)).vmas
        print("maps:")
        for m in maps:
            print(f"  {m.start:x}-{m.end:x} {m.perms} {m.name}")
        walk = self.inspect.WalkPageTable(inspect_pb2.WalkPageTableRequest(mm_id=mm, start=dev, end=dev + 4 * MiB))
        for run in walk.runs:
            level = common_pb2.PageTableLevel.Name(run.level).replace("PAGE_TABLE_LEVEL_", "")
            kind = inspect_pb2.PageTableEntryKind.Name(run.kind).replace("PAGE_TABLE_ENTRY_KIND_", "")
            print(f"  page table: {run.nr} {level} {kind} entries at {run.addr:#x} -> pfn {run.pfn:#x}")
        vm = self.inspect.GetVmstat(inspect_pb2.GetVmstatRequest()).counters
        print(f"vmstat: pgfault {vm['pgfault']}, thp_fault_alloc {vm['thp_fault_alloc']}, cow {vm['mmsim_cow_faults']}")
        chk = self.inspect.CheckInvariants(inspect_pb2.CheckInvariantsRequest())
        expect(not chk.violations, f"invariant violations: {[v.code + ' ' + v.message for v in chk.violations]}")
        print(f"invariants: OK ({chk.folios_checked} folios, {chk.mms_checked} mms)")

        self.sessions.CloseSession(session_pb2.CloseSessionRequest(session_id=sid))
        expect(self.stream_done.wait(10), "the session stream did not end")
        kinds = [session_pb2.SessionNoticeKind.Name(n.kind).replace("SESSION_NOTICE_KIND_", "") for n in self.notices]
        expect(self.stream_status == "OK" and "SESSION_CLOSING" in kinds, f"stream ended {self.stream_status}, notices {kinds}")
        print(f"session closed: stream ended {self.stream_status} after {', '.join(kinds)}")


def main(argv):
    p = argparse.ArgumentParser(description="A Python driver for mmsimd")
    p.add_argument("--addr", default=os.environ.get("MMSIM_ADDR", "127.0.0.1:50051"))
    a = p.parse_args(argv)
    d = Driver(a.addr)
    try:
        d.run()
    except grpc.RpcError as e:
        print(f"driver.py: {e.details()}", file=sys.stderr)
        return 1
    except Failed as e:
        print(f"driver.py: unexpected result: {e}", file=sys.stderr)
        return 1
    finally:
        d.channel.close()
    print("driver finished OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
