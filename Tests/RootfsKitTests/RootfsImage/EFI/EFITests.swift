import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The EFI writers (library level until wired into `rootfs image`): the unified
/// kernel image, the FAT ESP and the raw-efi disk, each checked by a second real
/// tool (objdump, fsck.vfat and mtools, sgdisk) and booted under OVMF.
@Suite(.serialized, .requires(.efi), .tags(.efi)) struct EFIWriterTests {
    static let osRelease = Array("ID=rootfs-test\nPRETTY_NAME=\"rootfs EFI test\"\n".utf8)

    /// Any PE file with the x86-64 machine stands in for a kernel where nothing boots: the stub itself.
    static var fakeKernel: String { UnifiedKernelImage.defaultStub }

    @Test func ukiHasTheSectionsAndTheSameBytesTwice() async throws {
        let dir = try Fixtures.temporaryDirectory("uki")
        defer { FS.remove(dir) }
        let initrd = dir + "/initrd"
        try Data(repeating: 0x5a, count: 100_001).write(to: URL(fileURLWithPath: initrd))
        let uki = UnifiedKernelImage(kernel: Self.fakeKernel, initrd: initrd, commandLine: "console=ttyS0 quiet", osRelease: Self.osRelease)
        try uki.write(to: dir + "/a.efi")
        try uki.write(to: dir + "/b.efi")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/a.efi")) == Data(contentsOf: URL(fileURLWithPath: dir + "/b.efi")))
        let headers = try await Fixtures.run("/usr/bin/objdump", ["-h", dir + "/a.efi"])
        #expect(headers.status == 0, "\(headers.stderr)")
        for name in [".osrel", ".cmdline", ".initrd", ".linux", ".sbat", ".text"] {
            #expect(headers.stdout.contains(" \(name) "), "\(name) missing:\n\(headers.stdout)")
        }
        // objdump's own reading of the .cmdline contents and of the checksum it recomputes.
        let cmdline = try await Fixtures.run("/usr/bin/objdump", ["-s", "-j", ".cmdline", dir + "/a.efi"])
        #expect(cmdline.stdout.contains("console=ttyS0 qu"), "\(cmdline.stdout)")
        let file = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/a.efi")))
        let pe = try PEImage(head: Array(file.prefix(4096)), what: "a.efi")
        let initrdSection = try #require(pe.sections.first { $0.nameText == ".initrd" })
        #expect(initrdSection.virtualSize == 100_001)
        #expect(file[Int(initrdSection.pointerToRawData)..<Int(initrdSection.pointerToRawData) + 100_001].allSatisfy { $0 == 0x5a })
        #expect(pe.sections.last?.nameText == ".linux")
        #expect(pe.sizeOfImage >= pe.sections.last!.virtualAddress + pe.sections.last!.virtualSize)
        // Sections in order, none overlapping in memory or in the file.
        for (a, b) in zip(pe.sections, pe.sections.dropFirst()) {
            #expect(a.virtualAddress + a.virtualSize <= b.virtualAddress)
            #expect(a.pointerToRawData + a.sizeOfRawData <= b.pointerToRawData)
        }
        // The checksum as an independent reader sums it (16-bit words, field skipped, plus the length).
        var sum: UInt32 = 0
        let field = pe.checksumOffset
        for i in stride(from: 0, to: file.count, by: 2) where i < field || i >= field + 4 {
            sum += UInt32(file[i]) | (i + 1 < file.count ? UInt32(file[i + 1]) << 8 : 0)
            sum = (sum & 0xffff) + (sum >> 16)
        }
        let stored = UInt32(file[field]) | UInt32(file[field + 1]) << 8 | UInt32(file[field + 2]) << 16 | UInt32(file[field + 3]) << 24
        #expect(stored == (sum & 0xffff) + UInt32(file.count))
    }

    @Test func ukiRefusesAMissingStubAKernelWithoutEFIStubAndAFullHeader() throws {
        let dir = try Fixtures.temporaryDirectory("uki-bad")
        defer { FS.remove(dir) }
        let noStub = UnifiedKernelImage(kernel: Self.fakeKernel, initrd: nil, commandLine: "", osRelease: [], stub: dir + "/none.stub")
        let e1 = #expect(throws: RootfsError.self) { try noStub.write(to: dir + "/x.efi") }
        #expect(e1?.hint?.contains("systemd-boot-efi") == true)

        try Data("#!/bin/sh\nnot a kernel\n".utf8).write(to: URL(fileURLWithPath: dir + "/vmlinux"))
        let elf = UnifiedKernelImage(kernel: dir + "/vmlinux", initrd: nil, commandLine: "", osRelease: [])
        let e2 = #expect(throws: RootfsError.self) { try elf.write(to: dir + "/x.efi") }
        #expect(e2?.message.contains("has no EFI stub") == true, "\(String(describing: e2))")
        #expect(e2?.message.contains("MZ") == true)

        // A stub claiming 14 sections: the 3 new headers no longer fit before its first section's data.
        var stub = try [UInt8](Data(contentsOf: URL(fileURLWithPath: UnifiedKernelImage.defaultStub)))
        let pe = try PEImage(head: stub, what: "stub")
        stub[pe.coffOffset + 2] = 14
        try Data(stub).write(to: URL(fileURLWithPath: dir + "/full.stub"))
        let full = UnifiedKernelImage(kernel: Self.fakeKernel, initrd: nil, commandLine: "", osRelease: [], stub: dir + "/full.stub")
        let e3 = #expect(throws: RootfsError.self) { try full.write(to: dir + "/x.efi") }
        #expect(e3?.message.contains("no room for") == true, "\(String(describing: e3))")
        #expect(!FS.exists(dir + "/x.efi"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["full.stub", "vmlinux"])
    }

    @Test func espPassesFsckAndReadsBackWithMtools() async throws {
        let dir = try Fixtures.temporaryDirectory("esp")
        defer { FS.remove(dir) }
        let big = dir + "/big"
        let bigBytes = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        try Data(bigBytes).write(to: URL(fileURLWithPath: big))
        let files = [
            FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(big)),
            FATImage.File(path: ["loader", "loader.conf"], content: .bytes(Array("default rootfs.conf\n".utf8))),
            FATImage.File(path: ["loader", "entries", "rootfs.conf"], content: .bytes(Array("title rootfs\nefi /EFI/BOOT/BOOTX64.EFI\n".utf8))),
            FATImage.File(path: ["EFI", "Linux", "rootfs-6.1.0-57-cloud-amd64.efi"], content: .bytes([1, 2, 3])),
        ]
        let image = FATImage(files: files, label: "ESP", volumeID: FATImage.volumeID(seed: "test"), epoch: 1_700_000_000)
        try image.write(to: dir + "/esp.img")
        try image.write(to: dir + "/esp2.img")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/esp.img")) == Data(contentsOf: URL(fileURLWithPath: dir + "/esp2.img")))
        let fsck = try await Fixtures.run("/usr/sbin/fsck.vfat", ["-n", "-v", dir + "/esp.img"])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        #expect(fsck.stdout.contains("16 bit entries") && !fsck.stdout.contains("Free cluster summary wrong"), "\(fsck.stdout)")
        let listing = try await Fixtures.run("/usr/bin/mdir", ["-i", dir + "/esp.img", "::/EFI/BOOT"])
        #expect(listing.status == 0, "\(listing.stderr)")
        #expect(listing.stdout.contains("BOOTX64  EFI   3000000"), "\(listing.stdout)")
        let entries = try await Fixtures.run("/usr/bin/mdir", ["-b", "-i", dir + "/esp.img", "::/loader/entries"])
        #expect(entries.stdout.contains("rootfs.conf"), "lowercase names read back lowercase: \(entries.stdout)")
        // The contents, read back by mtools.
        let copy = dir + "/copy"
        let mcopy = try await Fixtures.run("/usr/bin/mcopy", ["-i", dir + "/esp.img", "::/EFI/BOOT/BOOTX64.EFI", copy])
        #expect(mcopy.status == 0, "\(mcopy.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(bigBytes))
        let conf = try await Fixtures.run("/usr/bin/mtype", ["-i", dir + "/esp.img", "::/loader/loader.conf"])
        #expect(conf.stdout == "default rootfs.conf\n")
        let long = try await Fixtures.run("/usr/bin/mdir", ["-b", "-i", dir + "/esp.img", "::/EFI/Linux"])
        #expect(long.stdout.contains("rootfs-6.1.0-57-cloud-amd64.efi"), "a long name: \(long.stdout)")
        // The epoch is the files' time (2023-11-14 22:13 UTC).
        #expect(listing.stdout.contains("2023-11-14") && listing.stdout.contains("22:13"), "\(listing.stdout)")

        let bad = FATImage(files: [FATImage.File(path: ["EFI", "a:b"], content: .bytes([1]))], volumeID: 1, epoch: nil)
        #expect(throws: RootfsError.self) { try bad.write(to: dir + "/bad.img") }
    }
}

/// The EFI images booted under OVMF (TCG here): the UKI from a FAT ESP, and the raw-efi disk.
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox, .efi), .tags(.root, .network, .qemu, .busybox, .efi))
struct EFIBootTestsRequiringQEMU {
    static let firmware = "/usr/share/ovmf/OVMF.fd"

    /// Boots `disk` with OVMF; the agent writes the command's output to ttyS1 (returned) and powers off.
    static func bootWithOVMF(_ disk: String, console: String, cdrom: Bool = false, format: String = "raw") async throws -> Fixtures.CLIResult {
        let drive = cdrom ? ["-cdrom", disk]
            : ["-drive", "file=\(disk),if=none,id=d0,format=\(format),snapshot=on", "-device", "nvme,drive=d0,serial=rootfs"]
        return try await Fixtures.run("/usr/bin/timeout", ["600", "qemu-system-x86_64", "-accel", "tcg", "-m", "768", "-nographic",
            "-no-reboot", "-nic", "none", "-bios", firmware] + drive
            + ["-monitor", "none", "-serial", "file:\(console)", "-serial", "stdio"])
    }

    @Test func isoEFIHasTheEFIBootImageAndBootsUnderOVMF() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("iso-efi")
        defer { FS.remove(dir) }
        let line = try Self.agentParameters(["sh", "-c", "test -d /sys/firmware/efi && echo efi-booted-from-cd"])
        let uki = UnifiedKernelImage(kernel: fixture.kernel, initrd: fixture.initrd, commandLine: line, osRelease: EFIWriterTests.osRelease)
        try await EFIISO(uki: uki, epoch: 1_700_000_000).write(to: dir + "/a.iso")
        try await EFIISO(uki: uki, epoch: 1_700_000_000).write(to: dir + "/b.iso")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/a.iso")) == Data(contentsOf: URL(fileURLWithPath: dir + "/b.iso")))
        let report = try await Fixtures.run("/usr/bin/xorriso", ["-indev", dir + "/a.iso", "-report_el_torito", "plain"])
        #expect(report.stdout.contains("UEFI"), "\(report.stdout)\(report.stderr)")
        let result = try await Self.bootWithOVMF(dir + "/a.iso", console: dir + "/console.log", cdrom: true)
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        #expect(result.stdout.contains("efi-booted-from-cd"), "stdout: \(result.stdout)\nconsole tail: \(console.suffix(3000))")
    }

    /// Run in a guest of an EFI disk: its command line, the device mounted as / and what the
    /// kernel says of that partition (PARTN, PARTNAME from the GPT), for `expectRootByType`.
    static let rootByTypeScript = "cat /proc/cmdline; d=$(grep ' / ' /proc/mounts | cut -d' ' -f1); echo root-device=$d; cat /sys/class/block/${d#/dev/}/uevent"

    /// The guest booted with no root= and its / is partition 2 of the NVMe disk, the one EFIDisk
    /// types as the x86-64 root (the caller checks that type with sgdisk on the host).
    static func expectRootByType(_ stdout: String, console: String) {
        let lines = stdout.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map(String.init)
        let cmdline = lines.first { $0.contains("\(AgentProtocol.outputParameter)=") }
        #expect(cmdline != nil && !(cmdline ?? "").split(separator: " ").contains { $0.hasPrefix("root=") },
                "/proc/cmdline: \(cmdline ?? "none")\nstdout: \(stdout)\nconsole tail: \(console.suffix(3000))")
        #expect(lines.contains("root-device=/dev/nvme0n1p2") && lines.contains("PARTN=2") && lines.contains("PARTNAME=root-x86-64"),
                "stdout: \(stdout)\nconsole tail: \(console.suffix(3000))")
    }

    static func agentParameters(_ command: [String]) throws -> String {
        let encoded = try #require(AgentProtocol.encodeCommand(command))
        return "console=ttyS0 panic=-1 no_timer_check \(AgentProtocol.outputParameter)=ttyS1 \(AgentProtocol.commandParameter)=\(encoded)"
    }

    @Test func ukiOnAnESPBootsIntoTheAgent() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("uki-boot")
        defer { FS.remove(dir) }
        let line = try Self.agentParameters(["sh", "-c", "test -d /sys/firmware/efi && echo efi-booted; cat /etc/os-release"])
        try UnifiedKernelImage(kernel: fixture.kernel, initrd: fixture.initrd, commandLine: line,
                               osRelease: EFIWriterTests.osRelease).write(to: dir + "/uki.efi")
        let headers = try await Fixtures.run("/usr/bin/objdump", ["-h", dir + "/uki.efi"])
        #expect(headers.stdout.contains(" .uname "), "the Debian kernel's release: \(headers.stdout)")
        // A bare FAT volume (no partition table): OVMF boots \EFI\BOOT\BOOTX64.EFI from it.
        try FATImage(files: [FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(dir + "/uki.efi"))],
                     volumeID: 0x1234_5678, epoch: nil).write(to: dir + "/esp.img")
        let result = try await Self.bootWithOVMF(dir + "/esp.img", console: dir + "/console.log")
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        #expect(result.stdout.contains("efi-booted"), "stdout: \(result.stdout)\nconsole tail: \(console.suffix(3000))")
        #expect(result.stdout.contains("ID=rootfs-test"))
    }

    @Test func rawEFIDiskIsCleanAndBootsIntoItsRootPartition() async throws {
        let dir = try Fixtures.temporaryDirectory("raw-efi")
        defer { FS.remove(dir) }
        let fixture = try await BootFixture.shared.prepare()
        let root = URL(fileURLWithPath: dir + "/root")
        try BootFixture.makeRoot(at: root, busybox: "/bin/busybox", agent: try BootFixture.agentBinary(), init: .agent)
        // /sbin/init is the agent: `gpt-root` run in the booted guest names the same partition.
        let script = "test -d /sys/firmware/efi && echo efi-booted; echo gpt-root=$(/sbin/init gpt-root); " + Self.rootByTypeScript
        try GPTRootInitrd(agent: try BootFixture.agentBinary(), epoch: 1_700_000_000).write(to: dir + "/stage1.initrd")
        try GPTRootInitrd(agent: try BootFixture.agentBinary(), epoch: 1_700_000_000).write(to: dir + "/stage1-again.initrd")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/stage1.initrd")) == Data(contentsOf: URL(fileURLWithPath: dir + "/stage1-again.initrd")))
        // What the initrd holds, listed by cpio: the agent as /init and the marker it looks for.
        try FS.rename(dir + "/stage1-again.initrd", to: dir + "/stage1.cpio.gz")
        _ = try await Fixtures.run("/usr/bin/gzip", ["-d", dir + "/stage1.cpio.gz"])
        let listed = try await Fixtures.run("/usr/bin/cpio", ["-t", "--quiet", "-F", dir + "/stage1.cpio"])
        #expect(listed.stdout.split(separator: "\n").contains("init") && listed.stdout.contains("etc/initrd-release"), "\(listed.stdout)\(listed.stderr)")
        // A dynamic program as the agent is refused before anything is written.
        #expect(throws: RootfsError.self) { try GPTRootInitrd(agent: "/bin/ls", epoch: nil).write(to: dir + "/bad.initrd") }
        #expect(!FS.exists(dir + "/bad.initrd"))
        var disk = EFIDisk(kernel: fixture.kernel, initrd: dir + "/stage1.initrd", commandLine: try Self.agentParameters(["sh", "-c", script]),
                           osRelease: EFIWriterTests.osRelease, epoch: 1_700_000_000)
        disk.freeSpaceMiB = 8
        let written = try disk.write(source: .directory(root.path), to: dir + "/disk.img")
        try disk.write(source: .directory(root.path), to: dir + "/disk2.img")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/disk.img")) == Data(contentsOf: URL(fileURLWithPath: dir + "/disk2.img")))
        FS.remove(dir + "/disk2.img")

        let verify = try await Fixtures.run("/usr/sbin/sgdisk", ["-v", dir + "/disk.img"])
        #expect(verify.status == 0 && verify.stdout.contains("No problems found"), "\(verify.stdout)\(verify.stderr)")
        let esp = try await Fixtures.run("/usr/sbin/sgdisk", ["-i", "1", dir + "/disk.img"])
        #expect(esp.stdout.contains("EFI system partition") || esp.stdout.contains("EFI System"), "\(esp.stdout)")
        let rootInfo = try await Fixtures.run("/usr/sbin/sgdisk", ["-i", "2", dir + "/disk.img"])
        #expect(rootInfo.stdout.contains("Linux x86-64 root"), "sgdisk names the DPS type: \(rootInfo.stdout)")
        #expect(rootInfo.stdout.contains(written.rootPartitionUUID), "\(rootInfo.stdout)")
        // The ESP, cut out at its partition offset, checked by dosfstools and mtools.
        let espFile = dir + "/esp.img"
        let whole = try Data(contentsOf: URL(fileURLWithPath: dir + "/disk.img"))
        try whole.subdata(in: (1 << 20)..<((1 << 20) + Int(written.espBytes))).write(to: URL(fileURLWithPath: espFile))
        let fsck = try await Fixtures.run("/usr/sbin/fsck.vfat", ["-n", espFile])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        let listing = try await Fixtures.run("/usr/bin/mdir", ["-i", espFile, "::/EFI/BOOT"])
        #expect(listing.stdout.contains("BOOTX64  EFI"), "\(listing.stdout)")

        let result = try await Self.bootWithOVMF(dir + "/disk.img", console: dir + "/console.log")
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        // No root= on the command line: the stage-1 agent found partition 2 by its type and switched to it.
        Self.expectRootByType(result.stdout, console: console)
        #expect(console.contains("rootfs-agent stage-1: root /dev/nvme0n1p2 (GPT root type, read-write)"), "console tail: \(console.suffix(3000))")
        #expect(result.stdout.contains("efi-booted"))
        #expect(result.stdout.contains("gpt-root=/dev/nvme0n1p2"), "stdout: \(result.stdout)")
    }
}
