import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The EFI formats, LinuxKit's bundles and VHDX through the real CLI (`rootfs image`, `rootfs boot`):
/// each checked by a second tool (objdump, xorriso, sgdisk, fsck.vfat, qemu-img, tar) and booted
/// once into the agent under TCG (OVMF for the EFI ones). One small agent-init tree serves all.
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox, .efi), .tags(.root, .network, .qemu, .busybox, .efi))
struct EFIFormatsCLITests {
    static let env = ["SOURCE_DATE_EPOCH": "1700000000"]
    static let boot = ["--accel", "tcg", "--timeout", "900"]

    /// The agent-init tree (busybox, the agent as /sbin/init), made once per directory.
    static func tree(in dir: String) throws -> String {
        let root = dir + "/tree"
        try BootFixture.makeRoot(at: URL(fileURLWithPath: root), busybox: "/bin/busybox", agent: try BootFixture.agentBinary(), init: .agent)
        // Where `rootfs image` looks for the agent: the same program as /sbin/init.
        try FS.makeDirectories(root + "/usr/bin")
        try FileManager.default.createSymbolicLink(atPath: root + "/usr/bin/rootfs-agent", withDestinationPath: "../../sbin/init")
        return root
    }

    static func image(_ tree: String, _ format: String, _ output: String, kernel: String?, _ extra: [String] = []) async throws -> Fixtures.CLIResult {
        try await Fixtures.rootfs(["image", tree, "--format", format, "-o", output] + (kernel.map { ["--kernel", $0] } ?? []) + extra,
                                  environment: env)
    }

    static func same(_ a: String, _ b: String) async throws -> Bool {
        try await Fixtures.run("/usr/bin/cmp", [a, b]).status == 0
    }

    @Test func ukiHasItsSectionsIsReproducibleAndBootsUnderOVMF() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("uki-cli"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        for name in ["a.efi", "b.efi"] {
            let r = try await Self.image(tree, "uki", dir + "/" + name, kernel: fixture.kernel, ["--cmdline", "console=ttyS0 rootfs.test=kept"])
            #expect(r.status == 0, "\(r.stderr)")
        }
        let identical = try await Self.same(dir + "/a.efi", dir + "/b.efi")
        #expect(identical, "two builds with SOURCE_DATE_EPOCH differ")
        let headers = try await Fixtures.run("/usr/bin/objdump", ["-h", dir + "/a.efi"])
        for name in [".linux", ".initrd", ".cmdline", ".osrel"] {
            #expect(headers.stdout.contains(" \(name) "), "\(name) missing:\n\(headers.stdout)")
        }
        let osrel = try await Fixtures.run("/usr/bin/objdump", ["-s", "-j", ".osrel", dir + "/a.efi"])
        #expect(osrel.stdout.contains("ID=rootfs-test"), "the tree's os-release: \(osrel.stdout)")
        // rootfs boot knows it by content (the name says nothing), boots it with OVMF and keeps its .cmdline.
        try FS.rename(dir + "/a.efi", to: dir + "/plain-name")
        let r = try await Fixtures.rootfs(["boot", dir + "/plain-name"] + Self.boot
                                          + ["--", "sh", "-c", "test -d /sys/firmware/efi && echo efi-uki; cat /proc/cmdline"])
        #expect(r.status == 0, "\(r.stderr)")
        // The command's bytes only: OVMF's and the EFI stub's console lines stay off the output device.
        #expect(r.stdout.hasPrefix("efi-uki\n"), "stdout: \(r.stdout.debugDescription)\nstderr: \(r.stderr)")
        #expect(r.stdout.contains("rootfs.test=kept"), "\(r.stdout)")
        #expect(r.stderr.contains("unified kernel image with OVMF"), "\(r.stderr)")
    }

    @Test func efiFormatsRefuseBadInputBeforeWritingAnything() async throws {
        let dir = try Fixtures.temporaryDirectory("efi-bad"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        // No --kernel and no /boot/vmlinuz* in the tree.
        for (format, output) in [("uki", "x.efi"), ("iso-efi", "x-efi.iso"), ("raw-efi", "x-efi.img"), ("qcow2-efi", "x-efi.qcow2")] {
            let r = try await Self.image(tree, format, dir + "/" + output, kernel: nil)
            #expect(r.status != 0 && r.stderr.contains("\(format) needs a kernel") && r.stderr.contains("--kernel"), "\(format): \(r.stderr)")
            #expect(!FS.exists(dir + "/" + output))
        }
        // A kernel without an EFI stub (not a PE image).
        try "not a kernel\n".write(toFile: dir + "/vmlinux", atomically: false, encoding: .utf8)
        let r = try await Self.image(tree, "uki", dir + "/x.efi", kernel: dir + "/vmlinux")
        #expect(r.status != 0 && r.stderr.contains("has no EFI stub") && r.stderr.contains("CONFIG_EFI_STUB"), "\(r.stderr)")
        #expect(!FS.exists(dir + "/x.efi"))
        // --vhdx-fixed on an EFI format.
        let v = try await Self.image(tree, "raw-efi", dir + "/y-efi.img", kernel: dir + "/vmlinux", ["--vhdx-fixed"])
        #expect(v.status != 0 && v.stderr.contains("--vhdx-fixed applies to vhdx"), "\(v.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["tree", "vmlinux"])
        // No EFI stub on the host: exercised on the writer (EFITests), whose message names systemd-boot-efi.
    }

    @Test func efiISOsShowTheirEFIImageAndBootWithOVMFTheHybridWithSeaBIOSToo() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("iso-efi-cli"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        for (format, file) in [("iso-efi", "t-efi.iso"), ("iso-efi-initrd", "t-efi-initrd.iso"), ("iso-hybrid", "t-hybrid.iso")] {
            let r = try await Self.image(tree, format, dir + "/" + file, kernel: fixture.kernel)
            #expect(r.status == 0, "\(format): \(r.stderr)")
        }
        let hybrid2 = try await Self.image(tree, "iso-hybrid", dir + "/again.iso", kernel: fixture.kernel)
        let identical = try await Self.same(dir + "/t-hybrid.iso", dir + "/again.iso")
        #expect(hybrid2.status == 0 && identical, "two hybrid ISOs with SOURCE_DATE_EPOCH differ: \(hybrid2.stderr)")
        FS.remove(dir + "/again.iso")
        func report(_ file: String) async throws -> String {
            try await Fixtures.run("/usr/bin/xorriso", ["-indev", dir + "/" + file, "-report_el_torito", "plain"]).stdout
        }
        let efi = try await report("t-efi.iso"), hybrid = try await report("t-hybrid.iso")
        #expect(efi.contains("UEFI") && !efi.contains("BIOS"), "\(efi)")
        #expect(hybrid.contains("UEFI") && hybrid.contains("BIOS"), "\(hybrid)")
        // iso-efi-initrd: systemd-boot, its entry, the kernel and the initrd are files on the ESP.
        let listing = try await Fixtures.run("/usr/bin/osirrox", ["-indev", dir + "/t-efi-initrd.iso", "-extract", "/efiboot.img", dir + "/esp.img"])
        #expect(listing.status == 0, "\(listing.stderr)")
        let espFiles = try await Fixtures.run("/usr/bin/mdir", ["-b", "-/", "-i", dir + "/esp.img", "::/"])
        #expect(espFiles.stdout.contains("initrd.img") && espFiles.stdout.contains("BOOTX64.EFI") && espFiles.stdout.contains("rootfs.conf"), "\(espFiles.stdout)")

        for (file, firmware, says) in [("t-efi.iso", "auto", "OVMF"), ("t-efi-initrd.iso", "auto", "OVMF"),
                                       ("t-hybrid.iso", "auto", "OVMF"), ("t-hybrid.iso", "bios", "with the BIOS")] {
            let r = try await Fixtures.rootfs(["boot", dir + "/" + file, "--firmware", firmware] + Self.boot)
            #expect(r.status == 0 && r.stderr.contains("booted: ready in"), "\(file) (\(firmware)): \(r.stderr)")
            #expect(r.stderr.contains(says), "\(file) (\(firmware)): \(r.stderr)")
        }
        // An EFI-only ISO is not booted with the BIOS.
        let bios = try await Fixtures.rootfs(["boot", dir + "/t-efi.iso", "--firmware", "bios"] + Self.boot)
        #expect(bios.status != 0 && bios.stderr.contains("UEFI firmware only"), "\(bios.stderr)")
    }

    @Test func efiDisksAreCleanAndBootFromTheirESPIntoTheRootPartition() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("efi-disk-cli"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        // The disk's own command line runs the check (an ESP disk boots with what it was written with).
        let command = try #require(AgentProtocol.encodeCommand(["sh", "-c", "test -d /sys/firmware/efi && echo efi-disk; " + EFIBootTestsRequiringQEMU.rootByTypeScript]))
        let line = "console=ttyS0 panic=-1 no_timer_check \(AgentProtocol.outputParameter)=ttyS1 \(AgentProtocol.commandParameter)=\(command)"
        let raw = try await Self.image(tree, "raw-efi", dir + "/t-efi.img", kernel: fixture.kernel, ["--cmdline", line, "--free-space", "8"])
        #expect(raw.status == 0, "\(raw.stderr)")
        let qcow = try await Self.image(tree, "qcow2-efi", dir + "/t-efi.qcow2", kernel: fixture.kernel, ["--free-space", "8"])
        #expect(qcow.status == 0, "\(qcow.stderr)")

        let verify = try await Fixtures.run("/usr/sbin/sgdisk", ["-v", dir + "/t-efi.img"])
        #expect(verify.status == 0 && verify.stdout.contains("No problems found"), "\(verify.stdout)\(verify.stderr)")
        let root = try await Fixtures.run("/usr/sbin/sgdisk", ["-i", "2", dir + "/t-efi.img"])
        #expect(root.stdout.contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "the Discoverable Partitions x86-64 root type: \(root.stdout)")
        // The ESP cut out at the offset sgdisk reads from the GPT, checked by dosfstools.
        let esp = try await Fixtures.run("/usr/sbin/sgdisk", ["-i", "1", dir + "/t-efi.img"])
        func sector(_ label: String) throws -> Int {
            let line = try #require(esp.stdout.split(separator: "\n").first { $0.hasPrefix(label) }, "\(esp.stdout)")
            return try #require(Int(line.dropFirst(label.count).trimmingCharacters(in: .whitespaces).prefix { $0.isNumber }))
        }
        let first = try sector("First sector:"), last = try sector("Last sector:")
        let cut = try await Fixtures.run("/usr/bin/dd", ["if=\(dir)/t-efi.img", "of=\(dir)/esp.img", "bs=512", "skip=\(first)", "count=\(last - first + 1)"])
        #expect(cut.status == 0, "\(cut.stderr)")
        let fsck = try await Fixtures.run("/usr/sbin/fsck.vfat", ["-n", dir + "/esp.img"])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        let check = try await Fixtures.run("/usr/bin/qemu-img", ["check", "-f", "qcow2", dir + "/t-efi.qcow2"])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")

        // raw-efi straight under OVMF: the UKI's command line runs the check in the root partition.
        let booted = try await EFIBootTestsRequiringQEMU.bootWithOVMF(dir + "/t-efi.img", console: dir + "/console.log")
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        // No root=: the UKI's stage-1 initrd found partition 2 (sgdisk above: the x86-64 root type) by its type.
        EFIBootTestsRequiringQEMU.expectRootByType(booted.stdout, console: console)
        #expect(booted.stdout.contains("efi-disk"))
        // qcow2-efi through rootfs boot: known by content, booted from its ESP with OVMF, ready.
        let r = try await Fixtures.rootfs(["boot", dir + "/t-efi.qcow2"] + Self.boot)
        #expect(r.status == 0 && r.stderr.contains("booted: ready in"), "\(r.stderr)")
        #expect(r.stderr.contains("EFI system partition") && r.stderr.contains("OVMF"), "\(r.stderr)")
    }

    /// A systemd Debian guest (systemd is /sbin/init, the agent its service) as qcow2-efi: the
    /// stage-1 agent finds the root by its GPT type and hands over to systemd, which starts the agent.
    @Test func aSystemdGuestOnQcow2EFIBootsWithoutRoot() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let debian = try await Fixtures.debian.tree(agentInit: false)
        let dir = try Fixtures.temporaryDirectory("efi-systemd"); defer { FS.remove(dir) }
        let command = try #require(AgentProtocol.encodeCommand(["sh", "-c", "readlink -f /sbin/init; " + EFIBootTestsRequiringQEMU.rootByTypeScript]))
        let line = "console=ttyS0 panic=-1 no_timer_check \(AgentProtocol.outputParameter)=ttyS1 \(AgentProtocol.commandParameter)=\(command)"
        let qcow = try await Self.image(debian.directory, "qcow2-efi", dir + "/d-efi.qcow2", kernel: fixture.kernel, ["--cmdline", line, "--free-space", "16"])
        #expect(qcow.status == 0, "\(qcow.stderr)")
        _ = try await Fixtures.run("/usr/bin/qemu-img", ["convert", "-f", "qcow2", "-O", "raw", dir + "/d-efi.qcow2", dir + "/d.raw"])
        let verify = try await Fixtures.run("/usr/sbin/sgdisk", ["-v", dir + "/d.raw"])
        #expect(verify.status == 0 && verify.stdout.contains("No problems found"), "\(verify.stdout)\(verify.stderr)")
        let root = try await Fixtures.run("/usr/sbin/sgdisk", ["-i", "2", dir + "/d.raw"])
        #expect(root.stdout.contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "\(root.stdout)")
        FS.remove(dir + "/d.raw")
        let booted = try await EFIBootTestsRequiringQEMU.bootWithOVMF(dir + "/d-efi.qcow2", console: dir + "/console.log", format: "qcow2")
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        #expect(booted.stdout.contains("/systemd"), "/sbin/init is systemd: \(booted.stdout)\nconsole tail: \(console.suffix(3000))")
        EFIBootTestsRequiringQEMU.expectRootByType(booted.stdout, console: console)
    }

    @Test func linuxKitBundlesAreNamedAsLinuxKitNamesThemAndBoot() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("bundles-cli"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        // The tree's /boot stays out of the file system image.
        try FS.makeDirectories(tree + "/boot")
        try "x".write(toFile: tree + "/boot/marker", atomically: false, encoding: .utf8)
        let modules = try #require(KataStageOneInitrd.modulesDirectory(nextTo: fixture.kernel), "the test kernel's modules")
        for kind in ["squashfs", "erofs"] {
            let r = try await Self.image(tree, "kernel+\(kind)", dir + "/\(kind)", kernel: fixture.kernel, ["--cmdline", "rootfs.bundle=\(kind)"])
            #expect(r.status == 0, "\(r.stderr)")
            for file in ["-kernel", "-\(kind).img", "-cmdline"] { #expect(FS.isRegularFile(dir + "/\(kind)\(file)"), "\(kind)\(file)") }
            // Booted given the bundle's image: NAME-kernel and NAME-cmdline come with it; the stage-1 initrd loads the module.
            let boot = try await Fixtures.rootfs(["boot", dir + "/\(kind)-\(kind).img", "--modules", modules] + Self.boot
                                                 + ["--", "sh", "-c", "grep ' / ' /proc/mounts; cat /proc/cmdline; ls /boot 2>&1 || echo no-boot"])
            #expect(boot.status == 0, "\(boot.stderr)")
            #expect(boot.stdout.contains(" / \(kind) ro"), "\(kind): \(boot.stdout)\n\(boot.stderr)")
            #expect(boot.stdout.contains("rootfs.bundle=\(kind)"), "NAME-cmdline: \(boot.stdout)")
            #expect(boot.stdout.contains("no-boot"), "/boot is left out: \(boot.stdout)")
        }
        let tar = try await Self.image(tree, "tar-kernel-initrd", dir + "/t-initrd.tar", kernel: fixture.kernel, ["--cmdline", "console=ttyS0"])
        #expect(tar.status == 0, "\(tar.stderr)")
        let listed = try await Fixtures.run("/usr/bin/tar", ["-tvf", dir + "/t-initrd.tar"])
        #expect(listed.stdout.split(separator: "\n").map { String($0.split(separator: " ").last ?? "") } == ["kernel", "initrd.img", "cmdline"],
                "\(listed.stdout)")
        let kernel = try await Fixtures.run("/usr/bin/tar", ["-xOf", dir + "/t-initrd.tar", "kernel"])
        #expect(kernel.stdout.utf8.count > 0)
        let extracted = dir + "/x"
        try FS.makeDirectories(extracted)
        _ = try await Fixtures.run("/usr/bin/tar", ["-xf", dir + "/t-initrd.tar", "-C", extracted])
        let sameKernel = try await Self.same(extracted + "/kernel", fixture.kernel)
        #expect(sameKernel, "the tar's kernel is the --kernel")
    }

    @Test func vhdxBootsInRootfsBoot() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let dir = try Fixtures.temporaryDirectory("vhdx-boot"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        let w = try await Fixtures.rootfs(["image", tree, "-o", dir + "/t.vhdx", "--free-space", "8"], environment: Self.env)
        #expect(w.status == 0, "\(w.stderr)")
        let r = try await Fixtures.rootfs(["boot", dir + "/t.vhdx", "--kernel", fixture.kernel] + Self.boot
                                          + ["--", "sh", "-c", "grep ' / ' /proc/mounts; cat /etc/os-release"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains(" / ext4 rw") && r.stdout.contains("ID=rootfs-test"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.stderr.contains("VHDX holding"), "\(r.stderr)")
    }
}

/// What `rootfs boot` refuses by content, before QEMU starts (no boot needed).
@Suite(.requires(.root), .tags(.root)) struct EFIFormatsRecognitionTests {
    /// A VHDX whose file parameters say HasParent (a differencing disk) would make QEMU open
    /// another file: refused. The bit is set where MS-VHDX puts it, found through the metadata table.
    @Test func aVHDXWithAParentIsRefused() async throws {
        let dir = try Fixtures.temporaryDirectory("vhdx-parent"); defer { FS.remove(dir) }
        let tree = try NewFormatsCLITests.tinyTree(dir)
        let w = try await Fixtures.rootfs(["image", tree, "-o", dir + "/d.vhdx", "--free-space", "1"])
        #expect(w.status == 0, "\(w.stderr)")
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/d.vhdx")))
        #expect(try VHDXProbe.hasParent(what: "d.vhdx") { Array(bytes[$0..<min(bytes.count, $0 + $1)]) } == false)
        let table = VHDXWriter.metadataOffset
        let entries = Int(bytes[table + 10]) | Int(bytes[table + 11]) << 8
        let entry = try #require((0..<entries).map { table + 32 + $0 * 32 }.first {
            Array(bytes[$0..<$0 + 16]) == VHDXWriter.fileParametersGUID
        })
        let item = table + (Int(bytes[entry + 16]) | Int(bytes[entry + 17]) << 8 | Int(bytes[entry + 18]) << 16)
        bytes[item + 4] |= 0b10
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/d.vhdx"))
        let r = try await Fixtures.rootfs(["boot", dir + "/d.vhdx", "--kernel", "/bin/true", "--accel", "tcg"])
        #expect(r.status != 0 && r.stderr.contains("VHDX differencing disk's parent"), "\(r.stderr)")
    }

    /// systemd's stub is a PE file without .linux: an EFI program, not a UKI, refused clearly.
    @Test(.requires(.efi)) func anEFIProgramWithoutLinuxIsNotBooted() async throws {
        let stub = try await Fixtures.rootfs(["boot", UnifiedKernelImage.defaultStub, "--accel", "tcg"])
        #expect(stub.status != 0 && stub.stderr.contains("without a .linux section"), "\(stub.stderr)")
    }
}

/// `rootfs build --format X` takes the same road as `rootfs image`: the busybox test distro,
/// written as every new format under LinuxKit's names (nothing booted: EFIFormatsCLITests boots them).
@Suite(.requires(.root, .network, .busybox, .efi), .tags(.root, .network, .busybox, .efi))
struct EFIFormatsBuildTests {
    @Test func buildWritesTheNewFormatsUnderLinuxKitsNames() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let distros = try TestDistros.make(["bb": (TestDistros.busyboxConfig, TestDistros.busyboxLib)])
        defer { FS.remove(distros) }
        let dir = try Fixtures.temporaryDirectory("efi-build"); defer { FS.remove(dir) }
        let formats = ["uki", "iso-efi", "iso-efi-initrd", "iso-hybrid", "raw-efi", "qcow2-efi", "kernel+squashfs", "tar-kernel-initrd"]
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--agent-init", "--kernel", fixture.kernel, "-O", dir + "/out",
                                           "--free-space", "4"] + formats.flatMap { ["--format", $0] },
                                          environment: ["SOURCE_DATE_EPOCH": "1700000000"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let written = Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/out"))
        for name in ["bb.efi", "bb-efi.iso", "bb-efi-initrd.iso", "bb-hybrid.iso", "bb-efi.img", "bb-efi.qcow2",
                     "bb-kernel", "bb-squashfs.img", "bb-cmdline", "bb-initrd.tar"] {
            #expect(written.contains(name), "\(name) missing from \(written.sorted())")
        }
        let headers = try await Fixtures.run("/usr/bin/objdump", ["-h", dir + "/out/bb.efi"])
        #expect(headers.stdout.contains(" .linux ") && headers.stdout.contains(" .initrd "), "\(headers.stdout)")
        // Two bundles would write the same NAME-kernel and NAME-cmdline: refused before the build.
        let both = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--agent-init", "--kernel", fixture.kernel,
                                              "-O", dir + "/two", "--format", "kernel+squashfs", "--format", "kernel+erofs"], workingDirectory: dir)
        #expect(both.status != 0 && both.stderr.contains("kernel+squashfs and kernel+erofs all write"), "\(both.stderr)")
        #expect(!FS.exists(dir + "/two/bb-kernel"))
    }
}
