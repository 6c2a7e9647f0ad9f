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
    /// Serial lines after the first are PCI devices, not `-serial` ports.
    var extraPortsArePCI: Bool

    public static func forArchitecture(_ architecture: Architecture) throws -> GuestMachine {
        switch architecture {
        case .x86_64:
            return GuestMachine(architecture: architecture, qemu: "qemu-system-x86_64", qemuPackage: "qemu-system-x86",
                                console: "ttyS0", outputPort: "ttyS1", statusPort: "ttyS2", extraPortsArePCI: false)
        case .aarch64:
            return GuestMachine(architecture: architecture, qemu: "qemu-system-aarch64", qemuPackage: "qemu-system-arm",
                                console: "ttyAMA0", outputPort: "ttyS0", statusPort: "ttyS1", extraPortsArePCI: true)
        case .s390x, .ppc64le:
            throw RootfsError("rootfs boot does not boot \(architecture.rawValue) guests yet",
                              hint: "boot x86_64 or aarch64 images; \(architecture.rawValue) trees are built and checked only (docs/AGENT.md)")
        }
    }

    /// The board and CPU. KVM runs the host's CPU; TCG emulates a named one.
    func machineArguments(kvm: Bool) -> [String] {
        switch architecture {
        case .aarch64: ["-M", "virt", "-cpu", kvm ? "host" : "cortex-a57"]
        default: kvm ? ["-cpu", "host"] : []
        }
    }

    /// A serial line after the console, fed by or feeding `chardev`.
    func extraPort(chardev: String) -> [String] {
        extraPortsArePCI ? ["-device", "pci-serial,chardev=\(chardev)"] : ["-serial", "chardev:\(chardev)"]
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
