import Foundation

/// The QEMU machine for a guest architecture: the emulator, the board and CPU, the
/// console, and the two extra serial lines the agent writes the command's output and its
/// status to (docs/AGENT.md). x86_64's PC has three 16550 UARTs (ttyS0-2). The aarch64
/// `virt` board has one PL011 (ttyAMA0, the console); the two others are PCI 16550s
/// (`pci-serial`), which Debian's arm64 kernels drive built in (ttyS0, ttyS1).
public struct GuestMachine: Sendable, Equatable {
    public var architecture: Architecture
    public var qemu: String
    /// The Debian package that has `qemu`.
    public var qemuPackage: String
    public var console: String
    public var outputPort: String
    public var statusPort: String
    /// Serial lines after the first are devices (PCI 16550s, virtio consoles), not `-serial` ports.
    var extraPortsAreDevices: Bool { extraPorts != .serial }

    public static func forArchitecture(_ architecture: Architecture) throws -> GuestMachine {
        switch architecture {
        case .x86_64:
            return GuestMachine(architecture: architecture, qemu: "qemu-system-x86_64", qemuPackage: "qemu-system-x86",
                                console: "ttyS0", outputPort: "ttyS1", statusPort: "ttyS2", extraPorts: .serial)
        case .aarch64:
            return GuestMachine(architecture: architecture, qemu: "qemu-system-aarch64", qemuPackage: "qemu-system-arm",
                                console: "ttyAMA0", outputPort: "ttyS0", statusPort: "ttyS1", extraPorts: .pciSerial)
        case .s390x:
            // s390-ccw-virtio: the SCLP line console (ttysclp0) and virtio on the channel subsystem
            // (CCW); the agent's two lines are virtio consoles (hvc0, hvc1).
            return GuestMachine(architecture: architecture, qemu: "qemu-system-s390x", qemuPackage: "qemu-system-misc",
                                console: "ttysclp0", outputPort: "hvc0", statusPort: "hvc1", extraPorts: .virtioConsole(bus: "virtio-serial-ccw"),
                                diskDevice: "virtio-blk-ccw")
        case .ppc64le:
            // pseries: every -serial is a spapr-vty (hvc0 the console, hvc1 and hvc2 the agent's lines).
            return GuestMachine(architecture: architecture, qemu: "qemu-system-ppc64", qemuPackage: "qemu-system-ppc",
                                console: "hvc0", outputPort: "hvc1", statusPort: "hvc2", extraPorts: .serial,
                                diskDevice: "virtio-blk-pci")
        }
    }

    /// How the serial lines after the console are attached.
    enum ExtraPorts: Sendable, Equatable {
        /// More `-serial` ports (x86's 16550s, pseries' spapr-vty).
        case serial
        /// `pci-serial` 16550s (aarch64 virt).
        case pciSerial
        /// A virtio console each, on a virtio-serial bus of its own (s390x has no UARTs).
        case virtioConsole(bus: String)
    }

    var extraPorts: ExtraPorts
    /// The QEMU device of the root disk (x86_64, aarch64: NVMe, built into Debian's kernels).
    public var diskDevice: String = "nvme"

    init(architecture: Architecture, qemu: String, qemuPackage: String, console: String, outputPort: String,
         statusPort: String, extraPorts: ExtraPorts, diskDevice: String = "nvme") {
        self.architecture = architecture
        self.qemu = qemu
        self.qemuPackage = qemuPackage
        self.console = console
        self.outputPort = outputPort
        self.statusPort = statusPort
        self.extraPorts = extraPorts
        self.diskDevice = diskDevice
    }

    /// The guest's name of the root disk: NVMe's namespace, or virtio-blk's vda.
    public var diskName: String { diskDevice == "nvme" ? "/dev/nvme0n1" : "/dev/vda" }

    /// The root device of a disk layout on this machine's disk bus.
    public func rootDevice(of layout: DiskLayout) -> String {
        guard diskDevice != "nvme" else { return layout.rootDevice }
        return layout.table == .none ? diskName : diskName + "1"
    }

    /// The `-device` of a disk: NVMe needs a serial, virtio-blk takes none.
    func diskDeviceArguments(drive: String, serial: String) -> [String] {
        ["-device", diskDevice == "nvme" ? "nvme,drive=\(drive),serial=\(serial)" : "\(diskDevice),drive=\(drive)"]
    }

    /// The board and CPU. KVM runs the host's CPU; TCG emulates a named one.
    func machineArguments(kvm: Bool) -> [String] {
        switch architecture {
        case .aarch64: ["-M", "virt", "-cpu", kvm ? "host" : "cortex-a57"]
        case .s390x: ["-M", "s390-ccw-virtio"] + (kvm ? ["-cpu", "host"] : [])
        case .ppc64le: ["-M", "pseries"] + (kvm ? ["-cpu", "host"] : [])
        case .x86_64: kvm ? ["-cpu", "host"] : []
        }
    }

    /// A serial line after the console, fed by or feeding `chardev`.
    func extraPort(chardev: String) -> [String] {
        switch extraPorts {
        case .serial: ["-serial", "chardev:\(chardev)"]
        case .pciSerial: ["-device", "pci-serial,chardev=\(chardev)"]
        case .virtioConsole(let bus): ["-device", "\(bus),id=vs-\(chardev)", "-device", "virtconsole,chardev=\(chardev),bus=vs-\(chardev).0"]
        }
    }

    var qemuExecutableName: String { qemu }

    /// What a kernel file says about its architecture: an x86 bzImage has `HdrS` at 0x202,
    /// an arm64 Image `ARM\u{64}` at 56; Debian's arm64 vmlinuz is that Image gzipped
    /// (x86 kernels never are). Nil when it cannot be told.
    public static func kernelArchitecture(_ path: String) -> Architecture? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let head = [UInt8]((try? handle.read(upToCount: 0x210)) ?? Data())
        if head.count >= 0x206, head[0x202..<0x206] == [0x48, 0x64, 0x72, 0x53] { return .x86_64 }
        if head.count >= 60, head[56..<60] == [0x41, 0x52, 0x4d, 0x64] { return .aarch64 }
        if head.count >= 2, head[0] == 0x1f, head[1] == 0x8b { return .aarch64 }
        // ppc64el's kernel is an ELF vmlinux; s390x's image has no magic of its own.
        if let machine = ELF.machine(header: Array(head.prefix(20))) { return Architecture(elfMachine: machine) }
        return nil
    }

    /// Whether this host can run the guest under KVM at all (same architecture).
    public var kvmPossible: Bool { architecture == Architecture.host }
}

/// The architecture of a guest image, from its own content: the ELF machine of the init
/// the kernel would start (`/init` of an initrd, following links inside the archive).
public enum GuestArchitecture {
    /// Nil when it cannot be told (not an archive, no ELF init: a script, a disk image).
    public static func ofInitrd(_ path: String) -> Architecture? {
        guard let links = try? symlinks(in: path) else { return nil }
        // The kernel runs /init; rootfs's initrds make it a link to /sbin/init and on to the
        // agent, and merged-/usr trees make /sbin itself a link (to usr/sbin).
        guard let current = resolve("init", links: links) else { return nil }
        guard let header = try? head(of: current, in: path), let machine = ELF.machine(header: header) else { return nil }
        return Architecture(elfMachine: machine)
    }

    /// The programs a disk's kernel would start, in the order it tries them: /sbin/init (systemd,
    /// or the agent as init), /init, then the agent itself (an agent-only disk).
    static let diskInitCandidates = ["sbin/init", "init", "usr/bin/kata-agent"]

    /// The architecture of a disk image (ext4 bare or in a GPT/MBR partition, raw or any
    /// container qemu-img reads) from the ELF machine of its init, read in process from the
    /// file system. Nil when it cannot be told (another file system, no ELF init).
    public static func ofDisk(_ path: String, runner: ProcessRunner = ProcessRunner()) async -> Architecture? {
        guard let opened = try? await ImageOpener.open(path, runner: runner) else { return nil }
        defer { opened.close() }
        guard case .ext4(let raw, let offset) = opened.source else { return nil }
        for candidate in diskInitCandidates {
            guard let header = try? Ext4PathLookup.head(of: Array(candidate.utf8), image: raw, offset: offset, count: 20),
                  let machine = ELF.machine(header: header) else { continue }
            return Architecture(elfMachine: machine)
        }
        return nil
    }

    /// A path inside the archive with every link on the way followed (in any component),
    /// as the guest's kernel would; nil for a loop.
    static func resolve(_ path: String, links: [String: String]) -> String? {
        var pending = path.split(separator: "/").map(String.init)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == "." || part.isEmpty { continue }
            if part == ".." { _ = resolved.popLast(); continue }
            let candidate = (resolved + [part]).joined(separator: "/")
            guard let target = links[candidate] else { resolved.append(part); continue }
            hops += 1
            if hops > 40 { return nil }
            if target.hasPrefix("/") { resolved = [] }
            pending = target.split(separator: "/").map(String.init) + pending
        }
        return resolved.joined(separator: "/")
    }

    static func normalize(_ path: String) -> String {
        path.split(separator: "/").filter { $0 != "." && !$0.isEmpty }.joined(separator: "/")
    }

    static func symlinks(in path: String) throws -> [String: String] {
        var links: [String: String] = [:]
        for entry in try ArchiveReader.list(path) {
            if let target = entry.symlink { links[normalize(entry.path)] = target }
        }
        return links
    }

    static func head(of member: String, in path: String) throws -> [UInt8]? {
        let reader = try ArchiveReader(path: path)
        while let (entry, _) = try reader.next() {
            if normalize(entry.path) == member, entry.fileType == 0o100000 {
                return Array(try reader.readData(of: member).prefix(20))
            }
        }
        return nil
    }
}
