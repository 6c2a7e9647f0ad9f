import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

@Suite struct BootProtocolTests {
    static let commands: [[String]] = [
        ["sh", "-c", #"echo "a b" "c'd"; exit 7"#],
        ["printf", "%s\n", "two\nlines", "tab\there", "back\\slash", "$HOME `x` $(y)"],
        ["echo", "héllo wörld", "✓", "日本語", "emoji 🚀"],
        ["", "empty first", ""],
        ["a=b", "--x=\"quoted\"", "rootfs.cmd=nested"],
        [],
    ]

    @Test(arguments: commands)
    func commandRoundTrip(_ command: [String]) throws {
        let encoded = try #require(AgentProtocol.encodeCommand(command))
        // Only characters the kernel's parameter parser leaves alone.
        #expect(encoded.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
        #expect(AgentProtocol.decodeCommand(encoded) == command)
        // And it survives a trip through the kernel command line parser.
        let line = "console=ttyS0 rootfs.cmd=\(encoded) quiet"
        let value = AgentProtocol.parameter("rootfs.cmd", in: line)
        #expect(value.flatMap(AgentProtocol.decodeCommand) == command)
    }

    @Test func nulCannotBeEncoded() {
        #expect(AgentProtocol.encodeCommand(["a\u{0}b"]) == nil)
    }

    @Test func invalidEncodingsAreRejected() {
        #expect(AgentProtocol.decodeCommand("a+b/") == nil)   // standard, not url, alphabet
        #expect(AgentProtocol.decodeCommand("YQ") == nil)     // "a" without its NUL
        #expect(AgentProtocol.decodeCommand("Y") == nil)      // impossible length
        #expect(AgentProtocol.decodeCommand("") == [])
    }

    @Test func base64URLMatchesFoundation() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<64 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let expected = Data(bytes).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
            #expect(AgentProtocol.base64URLEncode(bytes) == expected)
            #expect(AgentProtocol.base64URLDecode(expected) == bytes)
        }
    }

    @Test func statusLines() {
        #expect(AgentProtocol.parseStatus("rootfs-agent: ready") == .ready)
        #expect(AgentProtocol.parseStatus("rootfs-agent: ready\r") == .ready)
        #expect(AgentProtocol.parseStatus("rootfs-agent: exit 7") == .exited(7))
        // The status device is the agent's own: a marker after other text is not a status.
        #expect(AgentProtocol.parseStatus("[    2.1] random: crng init donerootfs-agent: exit 0\r") == nil)
        #expect(AgentProtocol.parseStatus("rootfs-agent: signal 9") == .signaled(9))
        #expect(AgentProtocol.Status.signaled(9).shellStatus == 137)
        #expect(AgentProtocol.parseStatus("rootfs-agent: exit seven") == nil)
        #expect(AgentProtocol.parseStatus("rootfs-agent: ready, or not") == nil)
        #expect(AgentProtocol.parseStatus("[    1.0] Run /init as init process") == nil)
        for status in [AgentProtocol.Status.ready, .exited(255), .signaled(15)] {
            #expect(AgentProtocol.parseStatus(AgentProtocol.line(for: status)) == status)
        }
    }

    @Test func kernelCommandLineParsing() {
        let line = #"console=ttyS0 quiet rootfs.hostname=a rootfs.x="with spaces" rootfs.hostname=b"#
        let parsed = AgentProtocol.parseKernelCommandLine(line)
        #expect(parsed.map(\.name) == ["console", "quiet", "rootfs.hostname", "rootfs.x", "rootfs.hostname"])
        #expect(parsed[1].value == nil)
        #expect(parsed[3].value == "with spaces")
        #expect(AgentProtocol.parameter("rootfs.hostname", in: line) == "b")
        #expect(AgentProtocol.parameter("rootfs.cmd", in: line + "\n") == nil)
    }
}

@Suite struct BootArgumentTests {
    func boot(_ configure: (inout BootOptions) -> Void = { _ in }) -> QEMUBoot {
        var options = BootOptions(image: "/img/x.initrd", kernel: "/k/vmlinuz", command: ["sh", "-c", "exit 7"])
        options.unprivilegedUser = nil
        configure(&options)
        return QEMUBoot(options: options)
    }

    @Test func initrdArguments() throws {
        let command = try boot().qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/t/console.log", statusLog: "/t/status.log")
        let encoded = try #require(AgentProtocol.encodeCommand(["sh", "-c", "exit 7"]))
        #expect(command.tool == "qemu-system-x86_64")
        #expect(command.arguments == [
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", "/k/vmlinuz", "-initrd", "/img/x.initrd",
            "-append", "console=ttyS0 panic=-1 no_timer_check rootfs.out=ttyS1 rootfs.status=ttyS2 rootfs.cmd=\(encoded)",
            "-monitor", "none", "-chardev", "file,id=console,append=on,path=/t/console.log", "-serial", "chardev:console", "-serial", "stdio",
            "-chardev", "file,id=status,append=on,path=/t/status.log", "-serial", "chardev:status",
        ])
    }

    @Test func diskArguments() throws {
        let command = try boot {
            $0.image = "/img/disk.img"
            $0.memoryMB = 1024
            $0.append = "loglevel=3"
            $0.command = []
        }.qemuCommand(kind: .partitionedDisk, accelerator: .kvm, consoleLog: "/t/c", statusLog: "/t/s")
        let arguments = command.arguments
        #expect(Array(arguments.prefix(8)) == ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                                               "-accel", "kvm", "-cpu", "host", "-m", "1024"])
        #expect(arguments.contains("-snapshot"))
        #expect(!arguments.contains("-initrd"))
        let drive = try #require(arguments.firstIndex(of: "-drive"))
        #expect(arguments[drive + 1] == "if=none,id=d0,format=raw,file.driver=file,file.filename=/img/disk.img")
        #expect(arguments[drive + 3] == "nvme,drive=d0,serial=rootfs")
        let append = try #require(arguments.firstIndex(of: "-append"))
        #expect(arguments[append + 1]
            == "console=ttyS0 panic=-1 no_timer_check root=/dev/nvme0n1p1 rootfstype=ext4 rw rootfs.out=ttyS1 rootfs.status=ttyS2 loglevel=3")
    }

    @Test func interactiveArguments() throws {
        let command = try boot {
            $0.interactive = true
            $0.command = []
            $0.term = "xterm-256color"
        }.qemuCommand(kind: .filesystemImage, accelerator: .tcg, consoleLog: "/t/c", statusLog: "/t/s")
        let append = try #require(command.arguments.firstIndex(of: "-append"))
        let line = command.arguments[append + 1]
        #expect(line.contains("root=/dev/nvme0n1 "))
        #expect(line.contains("rootfs.tty=ttyS0 rootfs.status=ttyS1 rootfs.term=xterm-256color"))
        #expect(AgentProtocol.parameter("rootfs.cmd", in: line).flatMap(AgentProtocol.decodeCommand) == ["/bin/sh"])
        #expect(command.arguments.suffix(6) == ["-serial", "mon:stdio", "-chardev", "file,id=status,append=on,path=/t/s", "-serial", "chardev:status"])
    }

    @Test func tooLongCommandIsRefused() {
        #expect(throws: RootfsError.self) {
            try boot { $0.command = ["echo", String(repeating: "x", count: 3000)] }.kernelCommandLine(kind: .initrd)
        }
    }

    @Test func imageKinds() {
        var mbr = [UInt8](repeating: 0, count: 2048)
        mbr[510] = 0x55; mbr[511] = 0xaa
        var ext4 = [UInt8](repeating: 0, count: 2048)
        ext4[1080] = 0x53; ext4[1081] = 0xef
        #expect(BootImageKind.detect(head: mbr) == .disk(DiskLayout(table: .mbr, filesystem: .unknown)))
        #expect(BootImageKind.detect(head: ext4) == .filesystemImage)
        #expect(BootImageKind.detect(head: Array("070701000000".utf8)) == .initrd)
        #expect(BootImageKind.detect(head: [0x1f, 0x8b, 8, 0] + mbr.dropFirst(4)) == .initrd)
        #expect(BootImageKind.detect(head: [0x28, 0xb5, 0x2f, 0xfd, 0]) == .initrd)
        #expect(BootImageKind.detect(head: Array("hello world".utf8)) == nil)
        #expect(BootImageKind.partitionedDisk.rootDevice == "/dev/nvme0n1p1")
        #expect(BootImageKind.initrd.rootDevice == nil)
    }

    @Test func isoArguments() throws {
        let command = try boot {
            $0.image = "/img/x.iso"
            $0.kernel = nil
            $0.command = []
        }.qemuCommand(kind: .iso, accelerator: .tcg, consoleLog: "/t/c", statusLog: "/t/s")
        #expect(command.arguments == [
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nic", "none",
            "-drive", "if=ide,index=2,media=cdrom,format=raw,file.driver=file,file.filename=/img/x.iso", "-boot", "d",
            "-monitor", "none", "-chardev", "file,id=console,append=on,path=/t/c", "-serial", "chardev:console", "-serial", "stdio",
            "-chardev", "file,id=status,append=on,path=/t/s", "-serial", "chardev:status",
        ])
        // The ISO's command line was fixed when it was written: a command cannot be passed.
        #expect(throws: RootfsError.self) { try boot().kernelCommandLine(kind: .iso) }
    }

    @Test func containerDiskArguments() throws {
        let cases: [(DiskLayout, String, String)] = [
            (DiskLayout(container: .vpc, table: .mbr, filesystem: .ext4), "format=vpc", "root=/dev/nvme0n1p1 rootfstype=ext4 rw"),
            (DiskLayout(container: .qcow2, table: .gpt, filesystem: .ext4), "format=qcow2", "root=/dev/nvme0n1p1 rootfstype=ext4 rw"),
            (DiskLayout(container: .vmdk, table: .mbr, filesystem: .unknown), "format=vmdk", "root=/dev/nvme0n1p1 rw"),
            (DiskLayout(container: .raw, table: .none, filesystem: .erofs), "format=raw", "root=/dev/nvme0n1 rootfstype=erofs ro"),
            (DiskLayout(container: .raw, table: .mbr, filesystem: .erofs), "format=raw", "root=/dev/nvme0n1p1 rootfstype=erofs ro"),
        ]
        for (layout, format, root) in cases {
            let command = try boot {
                $0.image = "/img/d"
                $0.initrd = "/img/stage1"
                $0.command = []
            }.qemuCommand(kind: .disk(layout), accelerator: .tcg, consoleLog: "/t/c", statusLog: "/t/s")
            let a = command.arguments
            let drive = try #require(a.firstIndex(of: "-drive"))
            #expect(a[drive + 1] == "if=none,id=d0,\(format),file.driver=file,file.filename=/img/d" + (format == "format=qcow2" ? ",backing=" : ""))
            let initrd = try #require(a.firstIndex(of: "-initrd"))
            #expect(a[initrd + 1] == "/img/stage1")
            let append = try #require(a.firstIndex(of: "-append"))
            #expect(a[append + 1] == "console=ttyS0 panic=-1 no_timer_check \(root) rootfs.out=ttyS1 rootfs.status=ttyS2", "\(layout)")
        }
    }

    @Test func bundleFindsKernelAndCmdlineNextToTheInitrd() throws {
        let dir = try Fixtures.temporaryDirectory("bundle"); defer { FS.remove(dir) }
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/vm-initrd.img"))
        try Data("k".utf8).write(to: URL(fileURLWithPath: dir + "/vm-kernel"))
        try Data("console=ttyS0 quiet\n".utf8).write(to: URL(fileURLWithPath: dir + "/vm-cmdline"))
        let resolved = QEMUBoot.resolve(BootOptions(image: dir + "/vm-initrd.img", kernel: nil, command: ["true"]), kind: .initrd)
        #expect(resolved.kernel == dir + "/vm-kernel")
        let command = try QEMUBoot(options: resolved).qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/t/c", statusLog: "/t/s")
        let append = try #require(command.arguments.firstIndex(of: "-append"))
        #expect(command.arguments[append + 1].hasPrefix("console=ttyS0 quiet console=ttyS0 panic=-1 no_timer_check "))
        // --kernel wins; another name has no companions; without a kernel the error says what to pass.
        #expect(QEMUBoot.resolve(BootOptions(image: dir + "/vm-initrd.img", kernel: "/k", command: []), kind: .initrd).kernel == "/k")
        #expect(QEMUBoot.resolve(BootOptions(image: dir + "/vm.initrd", kernel: nil, command: []), kind: .initrd).kernel == nil)
        #expect(throws: RootfsError.self) {
            try QEMUBoot(options: BootOptions(image: dir + "/vm.initrd", kernel: nil, command: []))
                .qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/t/c", statusLog: "/t/s")
        }
    }

    @Test func diskLayoutsByContent() {
        func image(_ size: Int = BootImageKind.headBytes) -> [UInt8] { [UInt8](repeating: 0, count: size) }
        func put(_ v: UInt64, _ n: Int, at o: Int, in b: inout [UInt8]) { for i in 0..<n { b[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xff) } }
        // ISO 9660 (hybrid: an MBR too) -> iso.
        var iso = image()
        iso[510] = 0x55; iso[511] = 0xaa
        iso.replaceSubrange(0x8001..<0x8006, with: Array("CD001".utf8))
        #expect(BootImageKind.detect(head: iso) == .iso)
        // GPT: protective MBR (type 0xEE), header at LBA 1, entries at LBA 2, partition 1 at LBA 34 holding erofs.
        var gpt = image(34 * 512 + 2048)
        gpt[510] = 0x55; gpt[511] = 0xaa; gpt[446 + 4] = 0xee
        gpt.replaceSubrange(512..<520, with: Array("EFI PART".utf8))
        put(2, 8, at: 512 + 72, in: &gpt)
        put(128, 4, at: 512 + 80, in: &gpt)   // 128 entries of 128 bytes (PartitionProbe refuses other sizes)
        put(128, 4, at: 512 + 84, in: &gpt)
        put(34, 8, at: 1024 + 32, in: &gpt)
        put(37, 8, at: 1024 + 40, in: &gpt)
        put(0xE0F5_E1E2, 4, at: 34 * 512 + 1024, in: &gpt)
        #expect(BootImageKind.detect(head: gpt) == .disk(DiskLayout(table: .gpt, filesystem: .erofs)))
        // MBR with partition 1 at LBA 4 holding ext4.
        var mbr = image()
        mbr[510] = 0x55; mbr[511] = 0xaa
        put(4, 4, at: 446 + 8, in: &mbr)
        put(0xEF53, 2, at: 4 * 512 + 1024 + 56, in: &mbr)
        #expect(BootImageKind.detect(head: mbr) == .partitionedDisk)
        // A bare erofs; a fixed VHD (footer "conectix" in the last 512 bytes) around a bare ext4.
        var erofs = image()
        put(0xE0F5_E1E2, 4, at: 1024, in: &erofs)
        #expect(BootImageKind.detect(head: erofs) == .disk(DiskLayout(table: .none, filesystem: .erofs)))
        var ext4 = image()
        ext4[1080] = 0x53; ext4[1081] = 0xef
        let footer = Array("conectix".utf8) + [UInt8](repeating: 0, count: 504)
        #expect(BootImageKind.detect(head: ext4, tail: footer) == .disk(DiskLayout(container: .vpc, table: .none, filesystem: .ext4)))
        // Containers read through qemu-img: their magic decides the driver.
        #expect(BootImageKind.detect(head: [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])?.disk?.container == .qcow2)
        #expect(BootImageKind.detect(head: Array("KDMV\u{1}".utf8))?.disk?.container == .vmdk)
        #expect(BootImageKind.detect(head: Array("conectix".utf8))?.disk?.container == .vpc)
        #expect(BootImageKind.detect(head: image()) == nil)
        #expect(BootImageKind.probeCommand(image: "/i.qcow2", container: .qcow2, output: "/o").arguments
            == ["dd", "--image-opts", "-O", "raw", "bs=1M", "count=4", "if=driver=qcow2,file.driver=file,file.filename=/i.qcow2,backing=", "of=/o"])
    }

    @Test func bootCommandRefusesWhatItCannotBoot() async throws {
        let dir = try Fixtures.temporaryDirectory("bootcli"); defer { FS.remove(dir) }
        var ext4 = [UInt8](repeating: 0, count: 4096)
        ext4[1080] = 0x53; ext4[1081] = 0xef
        try Data(ext4).write(to: URL(fileURLWithPath: dir + "/bare.img"))
        let noKernel = try await Fixtures.rootfs(["boot", dir + "/bare.img", "--", "true"])
        #expect(noKernel.status == 125)
        #expect(noKernel.stderr.contains("no kernel to boot") && noKernel.stderr.contains("--kernel"), "\(noKernel.stderr)")
        try Data("not an image at all".utf8).write(to: URL(fileURLWithPath: dir + "/junk"))
        let junk = try await Fixtures.rootfs(["boot", dir + "/junk", "--kernel", dir + "/bare.img"])
        #expect(junk.status == 125)
        #expect(junk.stderr.contains("is neither an initrd, an ISO nor a disk image"), "\(junk.stderr)")
        try Data([0x1f, 0x8b, 8, 0]).write(to: URL(fileURLWithPath: dir + "/x.initrd"))
        let twoInitrds = try await Fixtures.rootfs(["boot", dir + "/x.initrd", "--kernel", dir + "/bare.img", "--initrd", dir + "/x.initrd"])
        #expect(twoInitrds.status == 125)
        #expect(twoInitrds.stderr.contains("--initrd boots a disk image"), "\(twoInitrds.stderr)")
    }

    @Test func consoleLinesArePrintable() {
        let line = ConsoleWatcher.printable(ArraySlice(Array("\u{1b}[?7l\u{1b}[2J[ 0.0] Linux\r".utf8)))
        #expect(line == "[ 0.0] Linux")
        // C1 controls (U+009B: CSI) and DEL never reach an error message.
        #expect(ConsoleWatcher.printable(ArraySlice(Array("a\u{9b}2Jb\u{85}c\u{7f}d é".utf8))) == "a2Jbcd é")
    }
}

@Suite struct KataStageOneWordTests {
    /// What becomes a word of the stage-1 /init script is a plain path or refused.
    @Test func onlyPlainPathsReachTheInitScript() {
        #expect(KataStageOneInitrd.isPlainPath("kernel/drivers/block/virtio_blk.ko"))
        #expect(KataStageOneInitrd.isPlainPath("6.1.0-57-cloud-amd64"))
        for bad in ["a;reboot -f", "$(id)", "x y", "../../etc/x.ko", "a\nb", "`id`", ""] {
            #expect(!KataStageOneInitrd.isPlainPath(bad), "\(bad.debugDescription)")
        }
    }
}
