import AgentProtocol
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Real boots: qemu-system-x86_64, cpio and gzip on PATH, a static busybox at
/// /bin/busybox (apt: qemu-system-x86 cpio busybox-static), the built
/// rootfs-agent next to the test bundle, and a kernel: ROOTFS_TEST_KERNEL or
/// the one scripts/fetch-test-kernel.sh puts into .build-kernel/ (fetched on
/// first use). Guests run under TCG when KVM does not work.
@Suite(.serialized, .requires(.root, .network, .qemu, .busybox), .tags(.root, .network, .qemu, .busybox)) struct BootTestsRequiringQEMU {
    @Test func runsACommandAndReturnsItsStatus() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let command = ["sh", "-c", #"echo "a b" "c'd"; exit 7"#]
        let (result, output) = try await fixture.boot(fixture.initrd, command)
        #expect(output == "a b c'd\n")
        #expect(result.status == .exited(7))
        #expect(result.exitStatus == 7)
        print("BootTestsRequiringQEMU: ready in \(String(format: "%.1f", result.readySeconds)) s (\(result.accelerator.rawValue))")
    }

    @Test func argumentsKeepSpacesQuotesNewlinesAndUnicode() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let arguments = ["two  spaces", "it's \"quoted\"", "line1\nline2", "héllo ✓ 日本", ""]
        let (result, output) = try await fixture.boot(fixture.initrd, ["printf", "[%s]\\n"] + arguments)
        #expect(result.status == .exited(0))
        #expect(output == arguments.map { "[\($0)]\n" }.joined())
    }

    /// The parallel gzip initrd (`rootfs initrd --compression gzip`, several 1 MiB blocks: busybox
    /// and the agent) is read by the kernel's own inflate: the guest boots and reads its files.
    @Test func parallelGzipInitrdBootsThroughTheCLI() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let tmp = try Fixtures.temporaryDirectory("bootgz"); defer { FS.remove(tmp) }
        // The fixture's tree (agent as /sbin/init), with the agent where `rootfs initrd`'s check looks for it.
        let root = tmp + "/root"
        try ToolCommandSync.run(["cp", "-a", FS.parent(fixture.initrd) + "/root", root])
        try FS.makeDirectories(root + "/usr/bin")
        try ToolCommandSync.run(["mv", root + "/sbin/init", root + "/usr/bin/rootfs-agent"])
        symlink("/usr/bin/rootfs-agent", root + "/sbin/init")
        let made = try await Fixtures.rootfs(["initrd", "-q", "--agent-init", "--compression", "gzip", root, "-o", tmp + "/x.initrd"])
        #expect(made.status == 0, "\(made.stderr)")
        try ToolCommandSync.run(["gzip", "-t", tmp + "/x.initrd"])
        let r = try await Fixtures.rootfs(["boot", tmp + "/x.initrd", "--kernel", fixture.kernel, "--accel", "tcg",
                                           "--", "cat", "/etc/os-release"])
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        #expect(r.stdout.contains("ID=rootfs-test"), "\(r.stdout)")
    }

    @Test func readsFilesOfTheImage() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let (result, output) = try await fixture.boot(fixture.initrd, ["cat", "/etc/os-release"])
        #expect(result.status == .exited(0))
        #expect(output.contains("ID=rootfs-test"))
        #expect(output.contains(#"PRETTY_NAME="rootfs boot test""#))
    }

    @Test func setsUpTheSystemAsInit() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let script = "hostname; cat /sys/class/net/lo/operstate /proc/sys/kernel/osrelease >/dev/null && echo ok;"
            + " grep -c -E ' /(proc|sys|dev|run|tmp) ' /proc/mounts; echo \"$PATH $HOME\""
        let (result, output) = try await fixture.boot(fixture.initrd, ["sh", "-c", script])
        #expect(result.status == .exited(0))
        #expect(output == "rootfs\nok\n5\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /root\n")
    }

    @Test func missingCommandExits127() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let (result, output) = try await fixture.boot(fixture.initrd, ["no-such-command"])
        #expect(result.status == .exited(127))
        #expect(output.contains("no-such-command: command not found"))
    }

    @Test func brokenInitrdFailsClearly() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let timeout = 60.0
        let started = ContinuousClock.now
        let error = await #expect(throws: RootfsError.self) {
            _ = try await fixture.boot(fixture.brokenInitrd, ["true"], timeout: timeout)
        }
        let elapsed = QEMUBoot.seconds(ContinuousClock.now - started)
        // The guest's own time is bounded by the timeout; QEMU's start-up on a loaded CI machine is not.
        #expect(elapsed < timeout + 45)
        #expect(error?.message.contains("panicked before the agent was ready") == true)
        #expect(error?.details.contains { $0.contains("Kernel panic") } == true)
        #expect(try processesNamed("qemu-system-x86_64", childrenOf: getpid()).isEmpty)
    }

    @Test func timeoutKillsTheGuest() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let error = await #expect(throws: RootfsError.self) {
            _ = try await fixture.boot(fixture.initrd, ["sleep", "600"], timeout: 15)
        }
        // On a loaded machine the guest may not even be ready by then: either way it is the timeout that ends it.
        #expect(error?.message.contains("did not finish within 15 s") == true
                || error?.message.contains("did not become ready within 15 s") == true, "\(String(describing: error))")
        #expect(try processesNamed("qemu-system-x86_64", childrenOf: getpid()).isEmpty)
    }

    @Test func bootsADiskImageWithoutChangingIt() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let before = try Data(contentsOf: URL(fileURLWithPath: fixture.disk))
        let script = "grep ' / ' /proc/mounts; cat /etc/os-release; echo changed > /etc/os-release; exit 3"
        let (result, output) = try await fixture.boot(fixture.disk, ["sh", "-c", script])
        #expect(result.status == .exited(3))
        #expect(output.hasPrefix("/dev/root / ext4 rw"))
        #expect(output.contains("ID=rootfs-test"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.disk)) == before)
    }

    @Test func agentWorksAsAnOrdinaryProcess() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let (result, output) = try await fixture.boot(fixture.serviceInitrd, ["sh", "-c", "hostname; echo $HOME; exit 5"])
        #expect(result.status == .exited(5))
        // Not PID 1: the agent leaves the hostname alone.
        #expect(output == "service-host\n/root\n")
    }

    /// A guest daemon that floods the console with the agent's own status line, forever,
    /// while the command hangs: `rootfs boot` believes only the status device, so this is a
    /// timeout (held under the flood), not a success; the work directory is gone after it.
    /// Then a console line that never ends and a failing command, with --json: exit 3.
    @Test func aFakeStatusOnTheConsoleDoesNotTurnAFailureIntoSuccess() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let tmp = try Fixtures.temporaryDirectory("bootfake"); defer { FS.remove(tmp) }
        let cases: [(script: String, json: Bool, timeout: Double)] = [
            ("while :; do echo 'rootfs-agent: exit 0'; done > /dev/console & sleep 600", false, 40),
            ("echo 'rootfs-agent: exit 0' > /dev/console; head -c 2000000 /dev/zero | tr '\\0' a > /dev/console; exit 3", true, 100),
        ]
        for (script, json, timeout) in cases {
            let result = try await Fixtures.rootfs(["boot", fixture.initrd, "--kernel", fixture.kernel, "--accel", "tcg",
                                                    "--timeout", String(Int(timeout))]
                                                   + (json ? ["--json"] : []) + ["--", "sh", "-c", script],
                                                   environment: ["TMPDIR": tmp])
            #expect(QEMUBoot.seconds(result.elapsed) < timeout + 45)
            if json {
                #expect(result.status == 3, "\(result.stderr)")
                #expect(result.stdout.contains(#""exitStatus" : 3"#) || result.stdout.contains(#""exitStatus":3"#), "\(result.stdout)")
            } else {
                // 124, as timeout(1): the guest's time ran out, which is neither its status nor rootfs's failure (125).
                #expect(result.status == 124, "\(result.stderr)")
                #expect(result.stderr.contains("did not finish within") || result.stderr.contains("did not become ready within"),
                        "\(result.stderr)")
            }
            // The boot's work directory (console and status logs) is gone.
            #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).isEmpty)
        }
    }

    /// SIGHUP (an ssh session dropped) while a guest runs: rootfs stops QEMU through the
    /// same cancellation as every command, exits 130, and leaves no console log behind.
    @Test func aHangupStopsQEMUAndLeavesNothingBehind() async throws {
        let fixture = try await BootFixture.shared.prepare()
        let tmp = try Fixtures.temporaryDirectory("boothup"); defer { FS.remove(tmp) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.rootfsBinary)
        process.arguments = ["boot", fixture.initrd, "--kernel", fixture.kernel, "--accel", "tcg", "--timeout", "300", "--", "sleep", "600"]
        process.environment = ProcessInfo.processInfo.environment.merging(["TMPDIR": tmp]) { $1 }
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Wait for QEMU to be running (its work directory exists), then hang up.
        let started = ContinuousClock.now
        while try FileManager.default.contentsOfDirectory(atPath: tmp).isEmpty && QEMUBoot.seconds(ContinuousClock.now - started) < 60 {
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(3))
        #expect(try !processesNamed("qemu-system-x86_64", childrenOf: process.processIdentifier).isEmpty)
        kill(process.processIdentifier, SIGHUP)
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 130, "\(String(decoding: stderr, as: UTF8.self))")
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).isEmpty)
        #expect(try processesNamed("qemu-system-x86_64", childrenOf: process.processIdentifier).isEmpty)
    }

    /// Our own qemu children (other test runs may boot guests at the same time).
    func processesNamed(_ name: String, childrenOf parent: Int32) throws -> [Int32] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let comm = stat[stat.index(after: stat.firstIndex(of: "(")!)..<close]
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            let state = fields.first.map(String.init) ?? ""
            return name.hasPrefix(comm) && fields.count > 1 && Int32(fields[1]) == parent && state != "Z"
        }
    }
}

/// Builds the test initrds once per test run.
actor BootFixture {
    static let shared = BootFixture()

    struct Prepared: Sendable {
        var kernel: String
        var initrd: String
        var brokenInitrd: String
        /// The agent started by a shell script init, i.e. not as PID 1 (like from a service unit).
        var serviceInitrd: String
        /// An MBR disk image with one ext4 partition holding the same tree as `initrd`.
        var disk: String

        func boot(_ image: String, _ command: [String], timeout: Double = 600) async throws -> (BootResult, String) {
            var options = BootOptions(image: image, kernel: kernel, command: command)
            options.timeout = timeout
            let collected = Collected()
            let result = try await QEMUBoot(options: options).run(onOutput: { collected.append($0) }, onNote: { note in
                print("BootTestsRequiringQEMU: \(note)")
            })
            return (result, collected.text)
        }
    }

    private var preparing: Task<Prepared, any Error>?

    /// Prepared once per test process; suites that call it concurrently share one preparation.
    func prepare() async throws -> Prepared {
        if let preparing { return try await preparing.value }
        let task = Task { try await Self.makePrepared() }
        preparing = task
        return try await task.value
    }

    private static func makePrepared() async throws -> Prepared {
        let packageRoot = URL(fileURLWithPath: Fixtures.repositoryRoot)
        let kernel = try await Self.kernel(packageRoot: packageRoot)
        let agent = try Self.agentBinary()
        let busybox = "/bin/busybox"
        guard FileManager.default.isExecutableFile(atPath: busybox) else {
            throw RootfsError("\(busybox) is missing", hint: "apt-get install busybox-static")
        }
        // Under the (git-ignored) .build-tests/ of the package; each run replaces the last one's.
        let work = packageRoot.appendingPathComponent(".build-tests/boot")
        try? FileManager.default.removeItem(at: work)
        let good = try await Self.makeInitrd(at: work.appendingPathComponent("good"), busybox: busybox, agent: agent, init: .agent)
        let broken = try await Self.makeInitrd(at: work.appendingPathComponent("broken"), busybox: busybox, agent: nil, init: .agent)
        let service = try await Self.makeInitrd(at: work.appendingPathComponent("service"), busybox: busybox, agent: agent, init: .script)
        let disk = try await Self.makeDisk(at: work.appendingPathComponent("disk"), busybox: busybox, agent: agent)
        return Prepared(kernel: kernel, initrd: good, brokenInitrd: broken, serviceInitrd: service, disk: disk)
    }

    /// The test kernel, fetched at most once per test process (suites ask concurrently).
    static func kernel(packageRoot: URL) async throws -> String {
        try await KernelCache.shared.path { try await fetchKernel(packageRoot: packageRoot) }
    }

    static func fetchKernel(packageRoot: URL) async throws -> String {
        if let path = ProcessInfo.processInfo.environment["ROOTFS_TEST_KERNEL"], !path.isEmpty { return path }
        let script = packageRoot.appendingPathComponent("scripts/fetch-test-kernel.sh").path
        let dest = packageRoot.appendingPathComponent(".build-kernel").path
        let output = try await ProcessRunner().capture(ToolCommand(script, [dest]))
        guard let path = output.standardOutput.split(separator: "\n").last.map(String.init),
              FileManager.default.isReadableFile(atPath: path) else {
            throw RootfsError("fetch-test-kernel.sh printed no kernel", details: [output.standardOutput])
        }
        return path
    }

    /// rootfs-agent from the products directory the test bundle lives in.
    static func agentBinary() throws -> String {
        if let path = ProcessInfo.processInfo.environment["ROOTFS_AGENT"], !path.isEmpty { return path }
        var candidates: [URL] = []
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        candidates.append(executable.deletingLastPathComponent())
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent())
        candidates.append(Bundle.main.bundleURL)
        for directory in candidates {
            let path = directory.appendingPathComponent("rootfs-agent").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw RootfsError("rootfs-agent not found next to the tests (\(candidates.map(\.path).joined(separator: ", ")))",
                          hint: "swift build --product rootfs-agent first, or set ROOTFS_AGENT")
    }

    enum InitStyle { case agent, script }

    /// A tree with busybox and its applets and /etc/os-release; with `.agent`
    /// the agent is /sbin/init and /init points at it, with `.script` /init is
    /// a shell script that starts /sbin/rootfs-agent as an ordinary process.
    static func makeRoot(at root: URL, busybox: String, agent: String?, init style: InitStyle) throws {
        let fm = FileManager.default
        for sub in ["bin", "sbin", "etc", "root", "proc", "sys", "dev", "run", "tmp"] {
            try fm.createDirectory(at: root.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        try fm.copyItem(atPath: busybox, toPath: root.appendingPathComponent("bin/busybox").path)
        for applet in ["sh", "cat", "echo", "printf", "hostname", "grep", "sleep", "true", "false", "ls", "mount", "head", "tr"] {
            try fm.createSymbolicLink(atPath: root.appendingPathComponent("bin/\(applet)").path, withDestinationPath: "busybox")
        }
        try "ID=rootfs-test\nPRETTY_NAME=\"rootfs boot test\"\n"
            .write(to: root.appendingPathComponent("etc/os-release"), atomically: true, encoding: .utf8)
        guard let agent else { return }
        switch style {
        case .agent:
            try fm.copyItem(atPath: agent, toPath: root.appendingPathComponent("sbin/init").path)
            try fm.createSymbolicLink(atPath: root.appendingPathComponent("init").path, withDestinationPath: "sbin/init")
        case .script:
            try fm.copyItem(atPath: agent, toPath: root.appendingPathComponent("sbin/rootfs-agent").path)
            let script = root.appendingPathComponent("init")
            try """
            #!/bin/sh
            mount -t proc proc /proc
            mount -t sysfs sysfs /sys
            mount -t devtmpfs devtmpfs /dev
            hostname service-host
            /sbin/rootfs-agent
            echo "init: rootfs-agent returned $?"
            sleep 600
            """.write(to: script, atomically: true, encoding: .utf8)
            try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script.path)
        }
    }

    /// A gzip'd initrd of `makeRoot`'s tree, written by the project's own InitrdWriter.
    static func makeInitrd(at directory: URL, busybox: String, agent: String?, init style: InitStyle) async throws -> String {
        let root = directory.appendingPathComponent("root")
        try makeRoot(at: root, busybox: busybox, agent: agent, init: style)
        let initrd = directory.appendingPathComponent("initrd.gz").path
        try InitrdWriter(compression: .gzip).write(tree: root.path, to: initrd)
        return initrd
    }

    /// A raw disk (MBR, ext4 at 1 MiB) written by the project's own DiskImageWriter.
    static func makeDisk(at directory: URL, busybox: String, agent: String) async throws -> String {
        let root = directory.appendingPathComponent("root")
        try makeRoot(at: root, busybox: busybox, agent: agent, init: .agent)
        let disk = directory.appendingPathComponent("disk.img").path
        try await DiskImageWriter(freeSpaceMiB: 16).write(tree: root.path, to: disk)
        return disk
    }
}

/// Output bytes collected from a callback.
final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    func append(_ more: [UInt8]) { lock.lock(); bytes += more; lock.unlock() }
    var text: String { lock.lock(); defer { lock.unlock() }; return String(decoding: bytes, as: UTF8.self) }
}

/// One kernel fetch per test process.
actor KernelCache {
    static let shared = KernelCache()
    private var task: Task<String, any Error>?

    func path(_ fetch: @escaping @Sendable () async throws -> String) async throws -> String {
        if let task { return try await task.value }
        let started = Task { try await fetch() }
        task = started
        return try await started.value
    }
}
