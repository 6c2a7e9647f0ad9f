import Foundation
import Synchronization
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Locations and shared, expensive fixtures for the tests.
enum Fixtures {
    /// The directory holding the built products (rootfs, rootfs-agent, the test bundle).
    static let productsDirectory: String = {
        let exe = FS.realpath("/proc/self/exe") ?? CommandLine.arguments[0]
        var dir = FS.parent(exe)
        // The test runner may live inside the .xctest bundle directory.
        while !FS.isRegularFile(dir + "/rootfs") && dir != "/" { dir = FS.parent(dir) }
        return dir
    }()

    static var rootfsBinary: String { productsDirectory + "/rootfs" }
    static var agentBinary: String { productsDirectory + "/rootfs-agent" }

    /// The checkout (holding distros/ and template/).
    static let repositoryRoot: String = {
        var dir = productsDirectory
        while dir != "/" && !FS.isRegularFile(dir + "/Package.swift") { dir = FS.parent(dir) }
        return dir
    }()

    /// A fresh temporary directory, removed by the caller with `FS.remove`.
    static func temporaryDirectory(_ label: String = "test") throws -> String {
        var template = Array("/tmp/rootfs-\(label)-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw RootfsError("mkdtemp failed") }
        return String(cString: made)
    }

    struct CLIResult: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
        /// From the program's start to its exit: the wait for a permit (`runPermits`) is not in it.
        var elapsed: Duration = .zero
    }

    /// Runs the real `rootfs` executable.
    /// Each call gets a fresh, empty cache (removed afterwards) unless the test names one
    /// (ROOTFS_CACHE_DIR or --cache-dir): a build in one test never hits another test's cached tree.
    /// `alongside`: the run must start now, beside a program of the test's own that waits for it
    /// or with it (a lock's holder, a second build at the same time); it takes no `runPermits`.
    static func rootfs(_ arguments: [String], environment: [String: String] = [:],
                       workingDirectory: String? = nil, alongside: Bool = false) async throws -> CLIResult {
        var env = environment
        var fresh: String?
        if env["ROOTFS_CACHE_DIR"] == nil && ProcessInfo.processInfo.environment["ROOTFS_CACHE_DIR"] == nil {
            let dir = try temporaryDirectory("cache")
            env["ROOTFS_CACHE_DIR"] = dir
            fresh = dir
        }
        defer { if let fresh { FS.remove(fresh) } }
        return try await run(rootfsBinary, arguments, environment: env, workingDirectory: workingDirectory, alongside: alongside)
    }

    /// Runs a program with no standard input and collects its output and exit status.
    /// Reading and waiting happen on threads of their own: the cooperative pool has one thread per
    /// core (two in CI), and a blocking read there held the whole pool for a run's length, so
    /// every other test, its pollers and its next step stopped until that run ended.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    workingDirectory: String? = nil, alongside: Bool = false) async throws -> CLIResult {
        let permit = alongside ? nil : await runPermits.acquire()
        defer { permit?.release() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        if let workingDirectory { process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory) }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let started = ContinuousClock.now
        try process.run()
        async let o = onThread { out.fileHandleForReading.readDataToEndOfFile() }
        async let e = onThread { err.fileHandleForReading.readDataToEndOfFile() }
        let (od, ed) = await (o, e)
        await onThread { [process] in process.waitUntilExit() }
        return CLIResult(status: process.terminationStatus, stdout: String(decoding: od, as: UTF8.self),
                         stderr: String(decoding: ed, as: UTF8.self), elapsed: ContinuousClock.now - started)
    }

    /// Runs `body` on a thread of its own and resumes with its result: for anything that blocks
    /// (a read, a wait, a poll with sleeps), which must not hold one of the pool's few threads.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: body()) }.start()
        }
    }

    /// At most this many programs from `run` at once. With the pool free, every test that is
    /// ready starts its program; on two cores a dozen builds and TCG boots at once stretched each
    /// past its own time bounds. The bound is soft: a run that waited `permitPatience` seconds
    /// goes ahead anyway, so a test whose program waits for another test's program cannot hang
    /// the suite.
    static let runPermits = Permits(count: ProcessInfo.processInfo.environment["ROOTFS_TEST_RUNS"]
                                        .flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil }
                                    ?? max(3, ProcessInfo.processInfo.activeProcessorCount + 1))
    static let permitPatience = 600.0

    /// A counting semaphore whose waits happen off the pool.
    final class Permits: Sendable {
        private let semaphore: DispatchSemaphore
        init(count: Int) { semaphore = DispatchSemaphore(value: count) }

        struct Permit: Sendable {
            fileprivate let semaphore: DispatchSemaphore?
            /// Gives the permit back (a run that went ahead without one gives nothing back).
            func release() { semaphore?.signal() }
        }

        func acquire() async -> Permit {
            if semaphore.wait(timeout: .now()) == .success { return Permit(semaphore: semaphore) }
            let semaphore = self.semaphore
            let got = await Fixtures.onThread { semaphore.wait(timeout: .now() + Fixtures.permitPatience) == .success }
            return Permit(semaphore: got ? semaphore : nil)
        }
    }

    /// Runs a program synchronously with no input or output and returns its exit
    /// status (nil when it cannot be started): for probes evaluated before tests run.
    static func status(_ executable: String, _ arguments: [String]) -> Int32? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Real Debian trees, built once per test run with the real `rootfs build debian`.
    static let debian = DebianTrees()
}

/// Directories of shared fixture builds (DebianTrees, AArch64Fixture), removed when the test process exits.
let debianFixtureDirectories = Mutex<[String]>([])

/// Builds each Debian variant at most once per test process (mmdebstrap takes
/// a while); every test that needs a real tree shares it and must not modify it.
actor DebianTrees {
    struct Tree: Sendable {
        var directory: String
        var initrd: String
        var image: String
    }

    private var built: [String: Task<Tree, any Error>] = [:]

    /// The trees are shared by every test of the process, so they go when it ends (each is ~250 MB;
    /// the aarch64 fixture's too).
    nonisolated static func removeAtExit(_ dir: String) {
        let first = debianFixtureDirectories.withLock { dirs in
            dirs.append(dir)
            return dirs.count == 1
        }
        if first { atexit { for dir in debianFixtureDirectories.withLock({ $0 }) { FS.remove(dir) } } }
    }

    /// `agentInit`: minbase with the agent as /sbin/init; otherwise systemd starts the agent.
    func tree(agentInit: Bool, extraPackages: [String] = []) async throws -> Tree {
        let key = "\(agentInit)-\(extraPackages.joined(separator: ","))"
        if let task = built[key] { return try await task.value }
        let task = Task<Tree, any Error> {
            let dir = try Fixtures.temporaryDirectory("debian-fixture")
            Self.removeAtExit(dir)
            var args = ["build", "debian", "-r", dir + "/rootfs", "--initrd", dir + "/debian.initrd",
                        "--image", dir + "/debian.img", "--compression", "gzip"]
            if agentInit { args.append("--agent-init") }
            for p in extraPackages { args += ["--extra-pkg", p] }
            let result = try await Fixtures.rootfs(args, environment: ["SOURCE_DATE_EPOCH": "1700000000"])
            guard result.status == 0 else {
                throw RootfsError("fixture build failed (\(result.status)): \(result.stderr.suffix(3000))")
            }
            return Tree(directory: dir + "/rootfs", initrd: dir + "/debian.initrd", image: dir + "/debian.img")
        }
        built[key] = task
        return try await task.value
    }
}
