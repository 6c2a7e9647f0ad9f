import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit

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
        #expect(AgentProtocol.parseStatus("[    2.1] random: crng init donerootfs-agent: exit 0\r") == .exited(0))
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
        configure(&options)
        return QEMUBoot(options: options)
    }

    @Test func initrdArguments() throws {
        let command = try boot().qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/t/console.log", statusLog: "/t/status.log")
        let encoded = try #require(AgentProtocol.encodeCommand(["sh", "-c", "exit 7"]))
        #expect(command.tool == "qemu-system-x86_64")
        #expect(command.arguments == [
            "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", "/k/vmlinuz", "-initrd", "/img/x.initrd",
            "-append", "console=ttyS0 panic=-1 rootfs.out=ttyS1 rootfs.cmd=\(encoded)",
            "-monitor", "none", "-serial", "file:/t/console.log", "-serial", "stdio",
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
        #expect(Array(arguments.prefix(6)) == ["-accel", "kvm", "-cpu", "host", "-m", "1024"])
        #expect(arguments.contains("-snapshot"))
        #expect(!arguments.contains("-initrd"))
        let drive = try #require(arguments.firstIndex(of: "-drive"))
        #expect(arguments[drive + 1] == "file=/img/disk.img,if=none,id=d0,format=raw")
        #expect(arguments[drive + 3] == "nvme,drive=d0,serial=rootfs")
        let append = try #require(arguments.firstIndex(of: "-append"))
        #expect(arguments[append + 1]
            == "console=ttyS0 panic=-1 root=/dev/nvme0n1p1 rootfstype=ext4 rw rootfs.out=ttyS1 loglevel=3")
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
        #expect(command.arguments.suffix(4) == ["-serial", "mon:stdio", "-serial", "file:/t/s"])
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
        #expect(BootImageKind.detect(head: mbr) == .partitionedDisk)
        #expect(BootImageKind.detect(head: ext4) == .filesystemImage)
        #expect(BootImageKind.detect(head: Array("070701000000".utf8)) == .initrd)
        #expect(BootImageKind.detect(head: [0x1f, 0x8b, 8, 0] + mbr.dropFirst(4)) == .initrd)
        #expect(BootImageKind.detect(head: [0x28, 0xb5, 0x2f, 0xfd, 0]) == .initrd)
        #expect(BootImageKind.detect(head: Array("hello world".utf8)) == nil)
        #expect(BootImageKind.partitionedDisk.rootDevice == "/dev/nvme0n1p1")
        #expect(BootImageKind.initrd.rootDevice == nil)
    }

    @Test func consoleLinesArePrintable() {
        let line = ConsoleWatcher.printable(ArraySlice(Array("\u{1b}[?7l\u{1b}[2J[ 0.0] Linux\r".utf8)))
        #expect(line == "[ 0.0] Linux")
    }
}
