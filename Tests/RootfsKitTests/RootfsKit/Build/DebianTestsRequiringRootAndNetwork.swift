import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Real Debian builds (mmdebstrap from Debian's mirror, as root) and what the
/// spine promises about them; then booting them with the real CLI under QEMU.
@Suite(.requires(.root, .network), .tags(.root, .network)) struct DebianTestsRequiringRootAndNetwork {
    @Test func agentInitInitrdHasInitAndAgentAndImagePassesFsck() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let entries = try ArchiveReader.list(tree.initrd)
        let byPath = Dictionary(entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byPath["init"]?.symlink == "/sbin/init")
        // trixie merges /usr: /sbin is a link, and /sbin/init lives in usr/sbin.
        let sbin = try #require(byPath["sbin"])
        let initPath = sbin.symlink.map { $0.hasPrefix("/") ? String($0.dropFirst()) + "/init" : $0 + "/init" } ?? "sbin/init"
        #expect(byPath[initPath]?.symlink == "/usr/bin/rootfs-agent")
        #expect(byPath["usr/bin/rootfs-agent"]?.fileType == UInt32(S_IFREG))
        #expect(GuestTree(root: tree.directory).resolve("/sbin/init")
                == .found(hostPath: tree.directory + "/usr/bin/rootfs-agent", guestPath: "/usr/bin/rootfs-agent"))
        // Ownership as dpkg set it.
        #expect(byPath["etc/shadow"]?.gid == 42)
        #expect(byPath["usr/bin/passwd"].map { $0.mode & 0o4000 != 0 } == true)

        let part = tree.image + "?offset=1048576"
        let runner = ProcessRunner()
        try await runner.capture(ToolCommand("e2fsck", ["-fn", part]))
        let stat = try await runner.capture(ToolCommand("debugfs", ["-R", "stat /usr/bin/rootfs-agent", part])).standardOutput
        #expect(stat.contains("Type: regular"))
        let record = try await runner.capture(ToolCommand("debugfs", ["-R", "cat \(BuildRecord.guestPath)", part])).standardOutput
        #expect(record.contains("sha256: \"\(try SHA256.hexDigest(ofFile: Fixtures.agentBinary))\""))
        #expect(record.contains("name: \"debian\"") && record.contains("version: \"trixie\""))

        let check = try await Fixtures.rootfs(["check", tree.directory, "--agent-init"])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func defaultBuildWritesRootfsInitrdAndImageWithSystemdAndExtraPackages() async throws {
        let work = try Fixtures.temporaryDirectory("default-build")
        defer { FS.remove(work) }
        let r = try await Fixtures.rootfs(["build", "debian"], environment: ["EXTRA_PKG": "less"], workingDirectory: work)
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        let dir = work + "/build/debian"
        #expect(r.stdout.contains("rootfs: \(dir)/rootfs"))
        #expect(r.stdout.contains("initrd: \(dir)/debian.initrd"))
        #expect(r.stdout.contains("image: \(dir)/debian.img"))
        let guest = GuestTree(root: dir + "/rootfs")
        // systemd is init, found inside the guest, and starts the agent.
        guard case .found(_, let initTarget) = guest.resolve("/sbin/init") else {
            Issue.record("no /sbin/init"); return
        }
        #expect(initTarget.hasSuffix("/systemd"))
        #expect(guest.resolve("/etc/systemd/system/default.target", followLast: false) != .loop)
        #expect(FS.isRegularFile(dir + "/rootfs/usr/lib/systemd/system/rootfs-agent.service"))
        let status = try String(contentsOfFile: dir + "/rootfs/var/lib/dpkg/status", encoding: .utf8)
        #expect(status.contains("Package: less\n"))
        #expect(status.contains("Package: systemd-sysv\n"))
        // zstd initrd by default, read back by libarchive.
        let head = try FileHandle(forReadingFrom: URL(fileURLWithPath: dir + "/debian.initrd")).read(upToCount: 4)
        #expect(head.map(Array.init) == [0x28, 0xb5, 0x2f, 0xfd])
        #expect(try ArchiveReader.list(dir + "/debian.initrd").contains { $0.path == "usr/bin/rootfs-agent" })
        try await ProcessRunner().capture(ToolCommand("e2fsck", ["-fn", dir + "/debian.img?offset=1048576"]))

        // A second build without --force refuses and keeps everything.
        let before = try SHA256.hexDigest(ofFile: dir + "/debian.initrd")
        let again = try await Fixtures.rootfs(["build", "debian"], workingDirectory: work)
        #expect(again.status != 0 && again.stderr.contains("--force"))
        #expect(try SHA256.hexDigest(ofFile: dir + "/debian.initrd") == before)
    }
}

@Suite(.serialized, .requires(.root, .network, .qemu), .tags(.root, .network, .qemu)) struct DebianBootTestsRequiringQEMUAndNetwork {
    func kernel() async throws -> String {
        try await BootFixture.kernel(packageRoot: URL(fileURLWithPath: Fixtures.repositoryRoot))
    }

    @Test func debianInitrdWithTheAgentAsInitRunsCommands() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: true)
        let kernel = try await kernel()
        let r = try await Fixtures.rootfs(["boot", tree.initrd, "--kernel", kernel, "--", "cat", "/etc/os-release"])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        #expect(r.stdout.contains("ID=debian"))
        print("DebianBootTests: initrd: \(r.stderr.split(separator: "\n").filter { $0.contains("ready in") }.joined())")
        let seven = try await Fixtures.rootfs(["boot", tree.initrd, "--kernel", kernel, "--", "sh", "-c", "exit 7"])
        #expect(seven.status == 7, "\(seven.stderr.suffix(2000))")
        // The default compression (zstd, written by libzstd with two workers) boots too.
        let dir = try Fixtures.temporaryDirectory("zstd-initrd")
        defer { FS.remove(dir) }
        try InitrdWriter(compression: .zstd).write(tree: tree.directory, to: dir + "/x.initrd")
        let zstd = try await Fixtures.rootfs(["boot", dir + "/x.initrd", "--kernel", kernel, "--", "cat", "/etc/os-release"])
        #expect(zstd.status == 0 && zstd.stdout.contains("ID=debian"), "\(zstd.stderr.suffix(2000))")
    }

    @Test func debianDiskWithSystemdStartsTheAgentFromItsUnit() async throws {
        let tree = try await Fixtures.debian.tree(agentInit: false)
        let kernel = try await kernel()
        let r = try await Fixtures.rootfs(["boot", tree.image, "--kernel", kernel, "--timeout", "300", "--",
                                           "sh", "-c", "cat /proc/1/comm; systemctl is-active rootfs-agent.service; echo ok"])
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stdout.contains("systemd\n"))
        #expect(r.stdout.contains("active\n"))
        #expect(r.stdout.hasSuffix("ok\n"))
        print("DebianBootTests: systemd disk: \(r.stderr.split(separator: "\n").filter { $0.contains("ready in") }.joined())")
    }
}
