import Foundation
import Synchronization
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `rootfs boot`'s devices and exit statuses through the real CLI. One guest boot checks
/// --cpus, --disk, --net user --publish, --share, --log-file's console and the guest's own status
/// (each TCG boot costs 20-60 s); a bad --qemu-arg fails before any guest runs.
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox), .tags(.root, .network, .qemu, .busybox))
struct BootDevicesTestsRequiringQEMU {
    /// The guest listens with busybox nc on its port 8080, published on a free host port: the host
    /// connects on 127.0.0.1, reads the guest's greeting and sends its own, which the guest prints.
    @Test func aGuestServesOnAPublishedPortAndSeesItsCPUsAndDisk() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let tmp = try Fixtures.temporaryDirectory("bootdev"); defer { FS.remove(tmp) }
        let port = try Self.freePort()
        let log = tmp + "/boot.log"
        let shared = tmp + "/shared"
        try FS.makeDirectories(shared)
        try "from-the-host-dir\n".write(toFile: shared + "/hello.txt", atomically: true, encoding: .utf8)
        let script = "grep -c ^processor /proc/cpuinfo; cat /sys/block/nvme0n1/size; cat /mnt/host/hello.txt;"
            + " echo written-by-guest > /mnt/host/back.txt;"
            + " echo hi-from-guest | busybox nc -l -p 8080 > /tmp/got; cat /tmp/got; exit 42"
        async let booted = Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--accel", "tcg",
                                            "--timeout", "240", "--cpus", "2", "--disk", "8M",
                                            "--net", "user", "--publish", "\(port):8080", "--log-file", log,
                                            "--share", "\(shared)=/mnt/host",
                                            "--", "sh", "-c", script],
                                           environment: ["TMPDIR": tmp])
        // Until the guest answers (slirp accepts before the guest listens, then closes: try again).
        // On a thread of its own: Fixtures.run blocks threads of the cooperative pool while it waits.
        let client = Self.Client()
        let thread = Thread { client.run(port: port) }
        thread.start()
        let result = try await booted
        let greeting = client.finish()
        #expect(greeting == "hi-from-guest\n")
        #expect(result.status == 42, "\(result.stderr.suffix(3000))")
        // 2 CPUs; 8 MiB of 512-byte sectors; the shared file; what the host sent.
        #expect(result.stdout == "2\n16384\nfrom-the-host-dir\nfrom-host\n", "\(result.stdout)")
        #expect((try? String(contentsOfFile: shared + "/back.txt", encoding: .utf8)) == "written-by-guest\n")
        // --log-file has the guest console (the kernel's banner) and the notes, without -v.
        let logged = try String(contentsOfFile: log, encoding: .utf8)
        #expect(logged.split(separator: "\n").contains { $0.hasPrefix("guest: ") && $0.contains("] Linux version") },
                "\(logged.prefix(2000))")
        #expect(logged.contains("rootfs: ready in"))
        #expect(!result.stderr.contains("Linux version"))
        // The scratch disk and the initrd with the modules went with the boot's work directory.
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).sorted() == ["boot.log", "shared"])
    }

    /// A QEMU that refuses an argument is rootfs's failure (125), not the guest's status.
    @Test func aBadQEMUArgumentExits125() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let result = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--accel", "tcg",
                                                "--qemu-arg", "-no-such-qemu-option", "--", "true"])
        #expect(result.status == 125, "\(result.stderr)")
        #expect(result.stderr.contains("no-such-qemu-option"), "\(result.stderr)")
    }

    /// Tries the exchange every half second until the guest answers or `finish` is called.
    final class Client: Sendable {
        private let state = Mutex<(greeting: String, stop: Bool)>(("", false))
        private let done = DispatchSemaphore(value: 0)
        func run(port: UInt16) {
            defer { done.signal() }
            while !state.withLock({ $0.stop }) {
                let answer = BootDevicesTestsRequiringQEMU.exchange(port: port, send: "from-host\n")
                if answer.contains("hi-from-guest") { state.withLock { $0.greeting = answer }; return }
                usleep(500_000)
            }
        }
        func finish() -> String {
            state.withLock { $0.stop = true }
            done.wait()
            return state.withLock { $0.greeting }
        }
    }

    /// Connects to 127.0.0.1:`port`, sends `send` and reads one line ("" on failure).
    static func exchange(port: UInt16, send: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        // Long: slirp's early accept ends at once (EOF, not this timeout), so only a connection that
        // reached the guest's nc waits here, and a TCG guest on a loaded host took over 5 s to answer
        // it (CI: the guest got "from-host", the host's read timed out, every later try was refused).
        var timeout = timeval(tv_sec: 90, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return "" }
        _ = Array(send.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        // Read the guest's line, then close: the guest's nc ends when the host does.
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !received.contains(0x0a) {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            received += buffer.prefix(n)
        }
        return String(decoding: received, as: UTF8.self)
    }

    /// A TCP port free on the host's loopback now (the kernel picks it).
    static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw RootfsError("no free port on 127.0.0.1: \(FS.errnoText())") }
        return UInt16(bigEndian: address.sin_port)
    }
}

/// What `rootfs boot` refuses before any guest runs, and the small parsers of its options.
struct BootOptionParsingTests {
    /// A zstd and a gzip tar are roots, not initrds: refused by content with the way out (125);
    /// a zstd cpio is still an initrd.
    @Test func aCompressedTarIsRefusedAsAnInitrd() async throws {
        let tmp = try Fixtures.temporaryDirectory("boottar"); defer { FS.remove(tmp) }
        try FS.makeDirectories(tmp + "/root/etc")
        try "ID=x\n".write(toFile: tmp + "/root/etc/os-release", atomically: true, encoding: .utf8)
        for (name, flag) in [("root.tar.zst", "--zstd"), ("root.tar.gz", "--gzip"), ("root.tar", "--no-auto-compress")] {
            try ToolCommandSync.run(["tar", flag, "-cf", tmp + "/" + name, "-C", tmp + "/root", "."])
            let result = try await Fixtures.rootfs(["boot", tmp + "/" + name, "--kernel", tmp + "/no-kernel", "--", "true"])
            #expect(result.status == 125, "\(name): \(result.stderr)")
            #expect(result.stderr.contains("a tar archive") && result.stderr.contains("not an initrd: use `rootfs initrd`"),
                    "\(name): \(result.stderr)")
        }
        let initrd = tmp + "/x.initrd"
        try InitrdWriter(compression: .zstd).write(tree: tmp + "/root", to: initrd)
        #expect(try await BootImageKind.detect(path: initrd) == .initrd)
        #expect(DecompressedPrefix.read(path: initrd, count: 6) == Array("070701".utf8))
    }

    /// A usage error of boot is rootfs's own failure too: 125, with the message.
    @Test func bootUsageErrorsExit125() async throws {
        for arguments in [["--cpus", "0"], ["--publish", "8080:80"], ["--disk", "no-such-file-or-size"], ["--no-such-flag"]] {
            let result = try await Fixtures.rootfs(["boot", "/nonexistent.initrd"] + arguments + ["--", "true"])
            #expect(result.status == 125, "\(arguments): \(result.stderr)")
            // One error prefix (docs/CLI.md): ArgumentParser's "Error:" is rootfs's "error:" too.
            #expect(result.stderr.hasPrefix("error: ") && !result.stderr.contains("Error:"), "\(arguments): \(result.stderr)")
        }
        // Every other subcommand keeps ArgumentParser's 64.
        #expect(try await Fixtures.rootfs(["size", "--no-such-flag"]).status == 64)
    }

    @Test func aShareWhosePathHasACommaIsRefused() throws {
        let dir = try Fixtures.temporaryDirectory("share-comma"); defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/a,allow_direct_io")
        try FS.makeDirectories(dir + "/plain")
        #expect(throws: RootfsError.self) { try GuestShare.parse(dir + "/a,allow_direct_io=/mnt") }
        #expect(try GuestShare.parse(dir + "/plain=/mnt").hostDirectory == dir + "/plain")
    }

    @Test func sizesAndPorts() throws {
        #expect(try ScratchDisk.parseSize("64M") == 64 << 20)
        #expect(try ScratchDisk.parseSize("1GiB") == 1 << 30)
        #expect(try ScratchDisk.parseSize("5000") == 5120)
        #expect(try ScratchDisk.parseSize("disk.img") == nil)
        #expect(throws: RootfsError.self) { try ScratchDisk.parseSize("99999999999999999999T") }
        #expect(throws: RootfsError.self) { try ScratchDisk.parseSize("17T") }
        #expect(throws: RootfsError.self) { try ScratchDisk.parseSize("0") }
        #expect(try GuestNetwork.Port.parse("8080:80") == .init(proto: .tcp, host: 8080, guest: 80))
        #expect(try GuestNetwork.Port.parse("udp:5353:53") == .init(proto: .udp, host: 5353, guest: 53))
        for bad in ["80", "0:80", "70000:80", "a:b", "sctp:1:2"] {
            #expect(throws: RootfsError.self) { try GuestNetwork.Port.parse(bad) }
        }
    }

    /// The new options add their QEMU arguments, and --qemu-arg comes last, verbatim.
    @Test func devicesAndPassthroughInTheQEMUCommand() throws {
        var options = BootOptions(image: "/i.initrd", kernel: "/k", command: ["true"])
        options.unprivilegedUser = nil
        let plain = try QEMUBoot(options: options).qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/c", statusLog: "/s")
        options.cpus = 3
        options.extraDisks = [.file("/d,x.img")]
        options.network = GuestNetwork(publish: [try .parse("8080:80")])
        options.extraQEMUArguments = ["-device", "virtio-rng-pci"]
        let command = try QEMUBoot(options: options).qemuCommand(kind: .initrd, accelerator: .tcg, consoleLog: "/c", statusLog: "/s")
        let args = command.arguments
        #expect(args.suffix(2) == ["-device", "virtio-rng-pci"])
        #expect(args.contains("-smp") && args[args.firstIndex(of: "-smp")! + 1] == "3")
        #expect(args.contains("if=none,id=x0,format=raw,snapshot=off,file.driver=file,file.filename=/d,,x.img"))
        #expect(args.contains("user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"))
        #expect(args.contains { $0.contains("rootfs.net=user") })
        // Without the options, none of it.
        #expect(!plain.arguments.contains("-smp") && !plain.arguments.contains("-netdev")
                && !plain.arguments.contains { $0.contains("rootfs.net") })
    }
}
