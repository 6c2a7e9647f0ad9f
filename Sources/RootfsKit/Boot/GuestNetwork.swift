import AgentProtocol
import Foundation

/// `rootfs boot --net user --publish HOST:GUEST`: QEMU's user-mode network (slirp) on a
/// virtio-net card. Needs no root, no bridge and no tap device; the guest reaches out
/// through QEMU, and reaches in only through the published ports, on the host's loopback.
public struct GuestNetwork: Sendable, Equatable {
    /// One `--publish [tcp|udp:]HOST:GUEST`: connections to 127.0.0.1:HOST reach the guest's GUEST.
    public struct Port: Sendable, Equatable {
        public enum Protocol_: String, Sendable { case tcp, udp }
        public var proto: Protocol_
        public var host: UInt16
        public var guest: UInt16

        /// `8080:80`, `udp:5353:53` (ports 1-65535).
        public static func parse(_ text: String) throws -> Port {
            var parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            var proto = Protocol_.tcp
            if parts.count == 3, let named = Protocol_(rawValue: parts[0]) { proto = named; parts.removeFirst() }
            guard parts.count == 2, let host = UInt16(parts[0]), let guest = UInt16(parts[1]), host > 0, guest > 0 else {
                throw RootfsError("--publish \(text): expected HOST:GUEST (ports 1-65535, e.g. 8080:80), or udp:HOST:GUEST",
                                  hint: "the host port listens on 127.0.0.1; the guest port is the one its service listens on")
            }
            return Port(proto: proto, host: host, guest: guest)
        }

        /// QEMU's `hostfwd=` value: bound to the host's loopback only.
        var hostForward: String { "\(proto.rawValue):127.0.0.1:\(host)-:\(guest)" }
    }

    public var publish: [Port] = []

    public init(publish: [Port] = []) { self.publish = publish }

    /// The modules virtio-net needs on a kernel like Debian's, where all of virtio is modular.
    public static let moduleNames = ["virtio_pci", "virtio_net"]

    /// What the agent is asked to configure (AgentProtocol.networkParameter).
    var agentValue: String { "user" }

    var qemuArguments: [String] {
        let forwards = publish.map { ",hostfwd=\($0.hostForward)" }.joined()
        // romfile= empty: no iPXE option ROM, which costs seconds under TCG and boots nothing here.
        return ["-netdev", "user,id=net0" + forwards, "-device", "virtio-net-pci,netdev=net0,romfile="]
    }

    /// `names`' module files and their dependencies, in load order, from `modulesDirectory`
    /// (a kernel's lib/modules/VERSION); built-in ones are left out.
    public static func modules(_ names: [String], modulesDirectory: String) async throws -> [GuestModule] {
        let vetted = try KernelModules(directory: modulesDirectory)
        let order = try await KataStageOneInitrd(modules: vetted, busybox: "/bin/busybox").loadOrder(names)
        return try order.map { path in
            let name = (FS.basename(path).split(separator: ".").first.map(String.init) ?? path)
            guard AgentProtocol.isModuleName(Substring(name)) else {
                throw RootfsError("the module \(path) in \(modulesDirectory) has a name the agent does not accept")
            }
            return GuestModule(name: name, hostPath: modulesDirectory + "/" + path)
        }
    }

    /// `initrd` followed by a second (gzip cpio) archive holding `modules` in
    /// AgentProtocol.modulesDirectory, written to `path`: the kernel unpacks both, one after
    /// the other, so the user's initrd is booted unchanged plus the modules for our devices.
    static func initrd(_ initrd: String, adding modules: [GuestModule], to path: String) throws {
        let stage = try FS.makeSiblingTemporaryDirectory(for: path + ".modules")
        defer { FS.remove(stage) }
        let tree = GuestTree(root: stage)
        for module in modules {
            try OverlayApplier(tree: tree).apply(.file(guestPath: Array((AgentProtocol.modulesDirectory + "/\(module.name).ko").utf8),
                                                      hostPath: module.hostPath))
        }
        let extra = path + ".modules.cpio.gz"
        defer { FS.remove(extra) }
        try InitrdWriter(compression: .gzip, epoch: 0).write(source: .directory(stage), to: extra)
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let out = FileHandle(forWritingAtPath: path) else {
            throw RootfsError("cannot write \(path): \(FS.errnoText())")
        }
        defer { try? out.close() }
        for part in [initrd, extra] {
            guard let input = FileHandle(forReadingAtPath: part) else { throw RootfsError("cannot read \(part): \(FS.errnoText())") }
            defer { try? input.close() }
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty { try out.write(contentsOf: chunk) }
            // The kernel looks for the next archive at a 4-byte boundary (zeros between are skipped).
            let size = try out.offset()
            if size % 4 != 0 { try out.write(contentsOf: Data(count: Int(4 - size % 4))) }
        }
    }
}

/// A kernel module the guest agent loads before our devices appear (virtio-net, virtiofs):
/// its file is added to the initrd, its name put on the kernel command line.
public struct GuestModule: Sendable, Equatable {
    public var name: String
    public var hostPath: String
}
