import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport
import AgentProtocol

/// rootfs boot's s390x and ppc64le machines. There is no reference agent for them (no Embedded
/// Swift standard library: docs/AGENT.md), so no boot can become "ready": the QEMU command
/// lines are checked here, and a boot of Debian's kernel for each with a busybox initrd shows
/// the machine, its console and the kernel reaching userspace under TCG (docs/AGENT.md, "Other architectures").
@Suite struct S390xPpc64leMachineArgumentTests {
    func command(_ arch: Architecture, kind: BootImageKind) throws -> [String] {
        var options = BootOptions(image: "/images/guest", kernel: "/k", command: ["true"])
        options.architecture = arch
        let command = try QEMUBoot(options: options).qemuCommand(kind: kind, accelerator: .tcg, consoleLog: "/c", statusLog: "/s")
        return [command.tool] + command.arguments
    }

    @Test func s390xRunsOnTheCCWMachineWithTheSCLPConsoleAndVirtioCCW() throws {
        let initrd = try command(.s390x, kind: .initrd)
        #expect(initrd.first == "qemu-system-s390x")
        #expect(initrd.joined(separator: " ").contains("-M s390-ccw-virtio"), "\(initrd)")
        let line = try #require(initrd.firstIndex(of: "-append").map { initrd[$0 + 1] })
        #expect(line.contains("console=ttysclp0"), "\(line)")
        #expect(line.contains("\(AgentProtocol.outputParameter)=hvc0") && line.contains("\(AgentProtocol.statusParameter)=hvc1"), "\(line)")
        // The agent's lines: a virtio console each (s390x has no UART to add).
        #expect(initrd.contains("virtio-serial-ccw,id=vs-status") && initrd.contains("virtconsole,chardev=status,bus=vs-status.0"), "\(initrd)")
        #expect(!initrd.contains { $0.contains("pci-serial") || $0.contains("nvme") })
        let disk = try command(.s390x, kind: .partitionedDisk)
        #expect(disk.contains("virtio-blk-ccw,drive=d0"), "\(disk)")
        let diskLine = try #require(disk.firstIndex(of: "-append").map { disk[$0 + 1] })
        #expect(diskLine.contains("root=/dev/vda1 rootfstype=ext4"), "\(diskLine)")
    }

    @Test func ppc64leRunsOnPseriesWithTheHypervisorConsoleAndVirtioPCI() throws {
        let initrd = try command(.ppc64le, kind: .initrd)
        #expect(initrd.first == "qemu-system-ppc64")
        #expect(initrd.joined(separator: " ").contains("-M pseries"), "\(initrd)")
        let line = try #require(initrd.firstIndex(of: "-append").map { initrd[$0 + 1] })
        #expect(line.contains("console=hvc0") && line.contains("\(AgentProtocol.outputParameter)=hvc1")
                && line.contains("\(AgentProtocol.statusParameter)=hvc2"), "\(line)")
        // pseries makes every -serial a spapr-vty: console, output, status.
        #expect(initrd.filter { $0 == "-serial" }.count == 3, "\(initrd)")
        let disk = try command(.ppc64le, kind: .filesystemImage)
        #expect(disk.contains("virtio-blk-pci,drive=d0"), "\(disk)")
        let diskLine = try #require(disk.firstIndex(of: "-append").map { disk[$0 + 1] })
        #expect(diskLine.contains("root=/dev/vda rootfstype=ext4"), "\(diskLine)")
    }
}

@Suite(.requires(.network, .foreignBoot), .tags(.network, .qemu, .foreignBoot))
struct S390xPpc64leBootTestsRequiringQEMU {
    /// Debian's busybox-static for `debianArch` as /init, which says what it runs on and powers off.
    static func busyboxInitrd(_ arch: Architecture, in dir: String) async throws -> String {
        let download = dir + "/download"
        try FS.makeDirectories(download)
        // apt-get download as root writes through the _apt user.
        chmod(download, 0o777)
        _ = try await ProcessRunner().capture(ToolCommand("apt-get", ["download", "busybox-static:\(arch.debianName)"],
                                                          workingDirectory: download))
        let deb = try #require(try FileManager.default.contentsOfDirectory(atPath: download).first { $0.hasSuffix(".deb") })
        let unpacked = dir + "/unpacked"
        _ = try await ProcessRunner().capture(ToolCommand("dpkg", ["-x", download + "/" + deb, unpacked]))
        let tree = dir + "/tree"
        try FS.makeDirectories(tree + "/bin")
        try FS.makeDirectories(tree + "/proc")
        try FileManager.default.copyItem(atPath: unpacked + "/bin/busybox", toPath: tree + "/bin/busybox")
        #expect(ELF.machine(tree + "/bin/busybox") == arch.elfMachine)
        try "#!/bin/busybox sh\necho guest-userspace $(/bin/busybox uname -m)\n/bin/busybox poweroff -f\n"
            .write(toFile: tree + "/init", atomically: true, encoding: .utf8)
        chmod(tree + "/init", 0o755)
        let initrd = dir + "/busybox.initrd"
        let r = try await Fixtures.rootfs(["image", tree, "-o", initrd, "--format", "initrd", "--compression", "gzip", "--no-agent-check"])
        #expect(r.status == 0, "\(r.stderr)")
        return initrd
    }

    @Test(arguments: [Architecture.s390x, .ppc64le])
    func debiansKernelReachesUserspaceOnTheMachine(_ arch: Architecture) async throws {
        let root = Fixtures.repositoryRoot
        let fetched = try await ProcessRunner().capture(ToolCommand(root + "/scripts/fetch-test-kernel.sh",
                                                                    ["--arch", arch.rawValue, root + "/.build-kernel-" + arch.rawValue]))
        let kernel = try #require(fetched.standardOutput.split(separator: "\n").last.map(String.init))
        let dir = try Fixtures.temporaryDirectory("boot-\(arch.rawValue)")
        defer { FS.remove(dir) }
        let initrd = try await Self.busyboxInitrd(arch, in: dir)
        let r = try await Fixtures.rootfs(["boot", initrd, "--arch", arch.rawValue, "--kernel", kernel, "--timeout", "180", "--", "true"])
        // Userspace ran on that machine (its uname -m on the console); with no agent it never becomes ready.
        #expect(r.stderr.contains("guest-userspace \(arch.rawValue)"), "\(r.stderr.suffix(3000))")
        #expect(r.stderr.contains("the guest stopped before the agent was ready"), "\(r.stderr.suffix(2000))")
        #expect(r.status != 0)
        #expect(r.elapsed < .seconds(180))
    }
}
