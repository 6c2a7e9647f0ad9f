import Foundation
import Synchronization

/// `rootfs boot --share HOSTDIR=GUESTDIR`: a host directory the guest mounts with virtiofs,
/// served by virtiofsd over a vhost-user socket in the boot's work directory. (Debian's cloud
/// kernel has no 9p at all; virtiofs is a module there, added to the initrd like virtio-net's.)
public struct GuestShare: Sendable, Equatable {
    public var hostDirectory: String
    public var guestPath: String

    public init(hostDirectory: String, guestPath: String) {
        self.hostDirectory = hostDirectory
        self.guestPath = guestPath
    }

    /// `HOSTDIR=GUESTDIR`, split at the last `=` followed by `/` (a host path may hold `=`).
    public static func parse(_ text: String) throws -> GuestShare {
        guard let split = text.ranges(of: "=/").last, split.lowerBound > text.startIndex else {
            throw RootfsError("--share \(text): expected HOSTDIR=GUESTDIR with an absolute guest path, e.g. ./data=/mnt/data")
        }
        let host = String(text[..<split.lowerBound])
        let guest = String(text[text.index(after: split.lowerBound)...])
        // virtiofsd takes it inside `-o source=DIR`, a comma-separated option list: a comma
        // would end the path and start an option of its own.
        guard !FS.absolute(host).contains(",") else {
            throw RootfsError("--share \(text): the host directory's path contains a comma, which virtiofsd would read as an option",
                              hint: "share a directory whose path has no comma (a symlink to it without one works)")
        }
        guard FS.isDirectory(host) else {
            throw RootfsError("--share \(text): \(host) is not a directory", hint: "share an existing host directory")
        }
        return GuestShare(hostDirectory: FS.absolute(host), guestPath: guest)
    }

    /// The virtiofs tag of share `index` (what the guest mounts).
    static func tag(_ index: Int) -> String { "rootfs\(index)" }

    /// virtio-pci and virtiofs (with fuse) when the kernel has them as modules.
    static let moduleNames = ["virtio_pci", "virtiofs"]

    /// virtiofsd: on PATH (the Rust one), or where Debian 12's QEMU puts its own.
    static func virtiofsd() -> String? {
        if let found = ProcessRunner.which("virtiofsd") { return found }
        return ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func command(_ share: GuestShare, socket: String, executable: String) -> ToolCommand {
        ToolCommand(executable, ["--socket-path=\(socket)", "-o", "source=\(share.hostDirectory)", "-o", "cache=auto"])
    }

    /// Runs `body` (QEMU) while one virtiofsd per share serves it; each is stopped once `body`
    /// returns or throws. Without shares, `body` alone.
    static func serving<T: Sendable>(_ shares: [GuestShare], sockets: [String], runner: ProcessRunner,
                                     _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        guard !shares.isEmpty, let executable = virtiofsd() else { return try await body() }
        let done = Flag()
        return try await withThrowingTaskGroup(of: T?.self) { group in
            for (share, socket) in zip(shares, sockets) {
                group.addTask {
                    // It exits by itself when QEMU closes the socket; a virtiofsd that failed shows as
                    // QEMU's own error (it cannot connect), with QEMU's message.
                    _ = try await runner.supervise(command(share, socket: socket, executable: executable), io: .pipes,
                                                   onOutput: { _ in }) { control in
                        while !done.isSet && !control.hasExited { try? await Task.sleep(for: .milliseconds(50)) }
                        control.kill()
                    }
                    return nil
                }
            }
            // QEMU connects to the sockets as it starts: wait until each is there.
            let started = ContinuousClock.now
            while !sockets.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) {
                if QEMUBoot.seconds(ContinuousClock.now - started) > 30 {
                    done.set()
                    throw RootfsError("virtiofsd made no socket within 30 s", hint: "run \(executable) --help to see whether it works here")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            defer { done.set() }
            let result = try await body()
            done.set()
            try await group.waitForAll()
            return result
        }
    }
}
