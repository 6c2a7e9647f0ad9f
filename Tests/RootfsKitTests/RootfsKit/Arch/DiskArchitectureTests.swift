import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs boot DISK` takes the guest's architecture from the disk's own /sbin/init (read in
/// process from its ext4 file system, links followed): these disks hold this host's agent as
/// init, so an --arch of another architecture is refused before QEMU starts. The aarch64 disk
/// is booted without --arch in AArch64TestsRequiringQEMU.
@Suite(.requires(.qemuImg), .tags(.qemuImg)) struct DiskArchitectureTests {
    @Test func aDisksInitNamesItsArchitectureInEveryLayout() async throws {
        let tree = try AlignedAndDAXImageTests.agentTree()
        let dir = try Fixtures.temporaryDirectory("disk-arch")
        defer { FS.remove(tree); FS.remove(dir) }
        let host = try #require(Architecture.host)
        let other: Architecture = host == .aarch64 ? .x86_64 : .aarch64
        // GPT and MBR raw disks, a qcow2 disk (converted by qemu-img to be read), a bare file system.
        let layouts: [(String, [String])] = [("gpt.img", ["--partition-table", "gpt"]), ("mbr.img", []),
                                             ("disk.qcow2", ["--format", "qcow2"]), ("bare.img", ["--no-partition-table"])]
        for (name, flags) in layouts {
            let image = dir + "/" + name
            let made = try await Fixtures.rootfs(["image", tree, "-o", image, "--agent-init"] + flags)
            #expect(made.status == 0, "\(made.stderr)")
            #expect(await GuestArchitecture.ofDisk(image) == host, "\(name)")
            let r = try await Fixtures.rootfs(["boot", image, "--arch", other.rawValue, "--kernel", "/nonexistent", "--", "true"])
            #expect(r.status != 0)
            #expect(r.stderr.contains("--arch \(other.rawValue) disagrees with \(image): its init is an \(host.rawValue) ELF file"), "\(name): \(r.stderr)")
        }
    }

    @Test func linksAreFollowedAndAScriptOrALoopTellsNothing() async throws {
        let dir = try Fixtures.temporaryDirectory("disk-arch-links")
        defer { FS.remove(dir) }
        let host = try #require(Architecture.host)
        // merged /usr: sbin -> usr/sbin, init a relative link on to the ELF file.
        let elf = dir + "/elf"
        try FS.makeDirectories(elf + "/usr/sbin")
        try FS.makeDirectories(elf + "/usr/lib/systemd")
        try FileManager.default.copyItem(atPath: Fixtures.agentBinary, toPath: elf + "/usr/lib/systemd/systemd")
        symlink("usr/sbin", elf + "/sbin")
        symlink("../lib/systemd/systemd", elf + "/usr/sbin/init")
        let script = dir + "/script"
        try FS.makeDirectories(script + "/sbin")
        try "#!/bin/sh\n".write(toFile: script + "/sbin/init", atomically: true, encoding: .utf8)
        let loop = dir + "/loop"
        try FS.makeDirectories(loop + "/sbin")
        symlink("/sbin/init", loop + "/sbin/init")
        for (tree, expected) in [(elf, host as Architecture?), (script, nil), (loop, nil)] {
            let image = tree + ".img"
            let made = try await Fixtures.rootfs(["image", tree, "-o", image, "--no-agent-check"])
            #expect(made.status == 0, "\(made.stderr)")
            #expect(await GuestArchitecture.ofDisk(image) == expected, "\(tree)")
        }
    }
}
