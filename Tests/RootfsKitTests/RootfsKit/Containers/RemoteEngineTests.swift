import Foundation
import Testing
import Synchronization
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `--docker` and `--podman` on an engine that cannot see this host's files: a second
/// dockerd with its own socket and data root (DOCKER_HOST), and `podman system service`
/// on its own socket (CONTAINER_HOST). Nothing may be bind-mounted into the builder
/// container, and the tree must come back with the owners a host build gives.
@Suite(.serialized, .requires(.root, .network, .docker, .podman), .tags(.root, .network, .docker, .podman),
       .timeLimit(.minutes(60)))
struct RemoteEngineTests {
    /// Starts `arguments` in the background with its output in `log`; the returned closure
    /// stops it (SIGTERM, SIGKILL after 20 s) and returns once it is gone or a zombie. It never
    /// calls waitUntilExit: Foundation did not reap a daemon killed with -9 here, and waiting on
    /// it hung the test.
    static func startDetached(_ arguments: [String], log: String) async throws -> @Sendable () -> Void {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let pid = process.processIdentifier
        // The closure keeps the Process (and so its child's bookkeeping) alive until the stop.
        return { withExtendedLifetime(process) { stop(pid: pid) } }
    }

    /// Whether `pid` still runs (a zombie does not).
    static func running(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    /// Sends `signal` to `pid`, then SIGKILL after 20 s; returns once it is gone.
    static func stop(pid: Int32, signal: Int32 = SIGTERM) {
        kill(pid, signal)
        for step in 0..<200 {
            if !running(pid) { return }
            if step == 100 { kill(pid, SIGKILL) }
            usleep(200_000)
        }
    }

    /// SIGKILL to every process whose command line names `text` (a killed dockerd's containerd).
    static func killProcesses(mentioning text: String) {
        let needle = Array(text.utf8)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != getpid(),
                  let cmdline = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let bytes = [UInt8](cmdline)
            if bytes.count >= needle.count, (0...(bytes.count - needle.count)).contains(where: { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }) {
                stop(pid: pid, signal: SIGKILL)
            }
        }
    }

    /// A dockerd of the test's own: socket, data root, exec root and pid file in `work`. A restart
    /// gets a new pid file: the killed daemon may linger as a zombie of ours, which dockerd's
    /// pid-file check would take for a running daemon.
    static func startDockerd(in work: String, log: String, pidFile: String = "docker.pid") async throws -> @Sendable () -> Void {
        try await startDetached(["dockerd", "--host", "unix://" + work + "/docker.sock", "--data-root", work + "/data",
                                 "--exec-root", work + "/exec", "--pidfile", work + "/" + pidFile,
                                 "--bridge", "none", "--iptables=false"], log: work + "/" + log)
    }

    /// Waits until `command` succeeds (the engine answers on its socket), at most `seconds` of
    /// wall time (a count of tries was no bound once each try could wait for the pool); the error
    /// has the last try's output and the tail of the engine's `log`, the only trace CI keeps.
    static func waitFor(_ command: [String], environment: [String: String], seconds: Int = 300, log: String? = nil) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        var last = ""
        while ContinuousClock.now < deadline {
            let tried = try await Fixtures.run("/usr/bin/env", command, environment: environment)
            if tried.status == 0 { return }
            last = tried.stderr.suffix(500).description
            try await Task.sleep(for: .milliseconds(500))
        }
        let logged = log.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }.map { String($0.suffix(2000)) } ?? ""
        throw RootfsError("\(command.joined(separator: " ")) never answered in \(seconds) s: \(last)\n\(logged)")
    }

    /// What `engine arguments` prints, or nil when it fails; synchronous, for a thread of its own.
    static func output(_ engine: String, _ arguments: [String], environment: [String: String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [engine] + arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }

    /// Records the mounts of every rootfs builder container the engine shows while `body` runs.
    /// The watcher is a thread of its own: the test pool's few threads may all be waiting on
    /// builds, and a task there could starve for the whole build.
    static func watchingMounts(_ engine: String, environment: [String: String],
                               _ body: @Sendable () async throws -> Void) async throws -> [String] {
        let seen = Collected()
        let stop = StopFlag()
        let thread = Thread {
            func output(_ arguments: [String]) -> String? { Self.output(engine, arguments, environment: environment) }
            while !stop.isSet {
                for id in (output(["ps", "-a", "-q", "--filter", "name=rootfs-build-"]) ?? "").split(separator: "\n") {
                    if let mounts = output(["inspect", "--format", "{{json .Mounts}}", String(id)]) {
                        seen.append(Array((mounts.trimmingCharacters(in: .whitespacesAndNewlines) + "\n").utf8))
                    }
                }
                Thread.sleep(forTimeInterval: 0.3)
            }
        }
        thread.start()
        defer { stop.set() }
        try await body()
        return seen.text.split(separator: "\n").map(String.init)
    }

    /// The remote build's tree against a host build of the same distro and options.
    static func expectHostOwners(_ tar: String) async throws {
        let host = try await Fixtures.debian.tree(agentInit: true)
        let diff = try await Fixtures.rootfs(["diff", "--ignore-mtime", tar, host.directory])
        // The build record names the engine; the builder image's mmdebstrap is a newer version
        // than the host's (TreeCompare.toolVersionDifferences). Nothing else may differ.
        let allowed = TreeCompare.toolVersionDifferences.union(["var/lib/osbuilder/osbuilder.yaml"])
        let lines = diff.stdout.split(separator: "\n").filter { line in !allowed.contains { line.contains("/" + $0 + ":") || line.hasSuffix("/" + $0) } }
        #expect(lines.isEmpty, "\(diff.stdout)\(diff.stderr)")
        let entries = Dictionary(uniqueKeysWithValues: try ArchiveReader.list(tar).map { ($0.path, $0) })
        #expect(entries["etc/shadow"].map { "\($0.uid):\($0.gid)" } == "0:42")
    }

    @Test func aSecondDockerdThroughDockerHost() async throws {
        try await ContainerTrees.shared.seedBaseImage(.docker)
        let work = try Fixtures.temporaryDirectory("remote-docker")
        let socket = "unix://" + work + "/docker.sock"
        let stop = try await Self.startDockerd(in: work, log: "dockerd.log")
        defer { stop(); FS.remove(work) }
        let env = ["DOCKER_HOST": socket, "SOURCE_DATE_EPOCH": "1700000000"]
        try await Self.waitFor(["docker", "info"], environment: env, log: work + "/dockerd.log")
        // Its store is its own: the base image travels to it through its API.
        try await OCIFixtures.run("docker", ["save", "-o", work + "/base.tar", "debian:trixie"])
        #expect(try await Fixtures.run("/usr/bin/env", ["docker", "load", "-i", work + "/base.tar"], environment: env).status == 0)

        let plan = try await Fixtures.rootfs(["build", "debian", "--docker", "--agent-init", "--dry-run"], environment: env, workingDirectory: work)
        #expect(plan.stdout.contains("remote engine (DOCKER_HOST=\(socket)): nothing bind-mounted"), "\(plan.stdout)")
        let mounts = try await Self.watchingMounts("docker", environment: env) {
            let build = try await Fixtures.rootfs(["build", "debian", "--docker", "--agent-init", "--format", "tar", "-O", work + "/out"],
                                                  environment: env, workingDirectory: work)
            #expect(build.status == 0, "\(build.stderr.suffix(3000))")
        }
        #expect(!mounts.isEmpty, "the builder container was never seen")
        #expect(mounts.allSatisfy { $0 == "[]" || $0 == "null" }, "\(mounts)")
        try await Self.expectHostOwners(work + "/out/debian.tar")
        // No container is left on the remote engine.
        let left = try await Fixtures.run("/usr/bin/env", ["docker", "ps", "-a", "-q"], environment: env)
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(left.stdout)")

        // The engine goes away mid-build: a clear error naming it, and no output.
        // A process of its own, not a task: the test pool's threads may all be blocked waiting.
        let building = Process()
        building.executableURL = URL(fileURLWithPath: Fixtures.rootfsBinary)
        // --no-cache: the first build's tree may be in the cache, and a hit would run no container.
        building.arguments = ["build", "debian", "--docker", "--agent-init", "--no-cache", "--format", "tar", "-O", work + "/gone"]
        building.environment = ProcessInfo.processInfo.environment.merging(env.merging(["ROOTFS_CACHE_DIR": work + "/cache"]) { $1 }) { $1 }
        building.currentDirectoryURL = URL(fileURLWithPath: work)
        FileManager.default.createFile(atPath: work + "/gone.log", contents: nil)
        let goneLog = try FileHandle(forWritingTo: URL(fileURLWithPath: work + "/gone.log"))
        building.standardOutput = goneLog
        building.standardError = goneLog
        building.standardInput = FileHandle.nullDevice
        try building.run()
        // The builder container runs for minutes (mmdebstrap); up to 15 minutes for it to start.
        let seen = await Fixtures.onThread { [building] in
            for _ in 0..<4500 where building.isRunning {
                let ids = Self.output("docker", ["ps", "-q", "--filter", "name=rootfs-build-"], environment: env) ?? ""
                if !ids.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { return true }
                Thread.sleep(forTimeInterval: 0.2)
            }
            return false
        }
        #expect(seen, "the second build's container never ran: \((try? String(contentsOfFile: work + "/gone.log", encoding: .utf8))?.suffix(2000) ?? "")")
        let pid = try String(contentsOfFile: work + "/docker.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        Self.stop(pid: try #require(Int32(pid)), signal: SIGKILL)
        // The whole engine goes: its containerd and shims too (they would hold the exec root).
        Self.killProcesses(mentioning: work + "/exec")
        await Fixtures.onThread { [building] in building.waitUntilExit() }
        let said = try String(contentsOfFile: work + "/gone.log", encoding: .utf8)
        #expect(building.terminationStatus != 0)
        #expect(said.contains("went away") && said.contains(socket), "\(said.suffix(2000))")
        #expect(!FS.exists(work + "/gone/debian.tar"))
        // The engine returns on the same data root: the builder container (--rm) is not left on it.
        // Its killed containerd may linger as a zombie nobody reaps yet; dockerd takes a pid file
        // naming a pid that kill(pid, 0) still finds for a running containerd and waits for its
        // socket until it gives up (seen here), so the stale pid file goes first.
        unlink(work + "/exec/containerd/containerd.pid")
        let restarted = try await Self.startDockerd(in: work, log: "dockerd-restarted.log", pidFile: "docker-restarted.pid")
        defer { restarted() }
        try await Self.waitFor(["docker", "info"], environment: env, log: work + "/dockerd-restarted.log")
        // The engine removes --rm containers it finds dead as it comes back; give it a minute.
        let after = await Fixtures.onThread { () -> String? in
            var listed: String?
            for _ in 0..<120 {
                listed = Self.output("docker", ["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"], environment: env)
                if listed?.trimmingCharacters(in: .whitespacesAndNewlines) == "" { break }
                Thread.sleep(forTimeInterval: 0.5)
            }
            return listed
        }
        let restartLog = ((try? String(contentsOfFile: work + "/dockerd-restarted.log", encoding: .utf8)) ?? "").suffix(2000)
        #expect(after?.trimmingCharacters(in: .whitespacesAndNewlines) == "",
                "left on the restarted engine: \(after ?? "(docker ps failed)")\n\(restartLog)")
    }

    @Test func podmanThroughContainerHost() async throws {
        try await ContainerTrees.shared.seedBaseImage(.podman)
        let work = try Fixtures.temporaryDirectory("remote-podman")
        let socket = "unix://" + work + "/podman.sock"
        let stop = try await Self.startDetached(["podman", "system", "service", "--time=0", socket], log: work + "/podman.log")
        defer { stop(); FS.remove(work) }
        let env = ["CONTAINER_HOST": socket, "SOURCE_DATE_EPOCH": "1700000000"]
        try await Self.waitFor(["podman", "--remote", "info"], environment: env)
        let plan = try await Fixtures.rootfs(["build", "debian", "--podman", "--agent-init", "--dry-run"], environment: env, workingDirectory: work)
        #expect(plan.stdout.contains("remote engine (CONTAINER_HOST=\(socket)): nothing bind-mounted"), "\(plan.stdout)")
        let mounts = try await Self.watchingMounts("podman", environment: env) {
            let build = try await Fixtures.rootfs(["build", "debian", "--podman", "--agent-init", "--format", "tar", "-O", work + "/out"],
                                                  environment: env, workingDirectory: work)
            #expect(build.status == 0, "\(build.stderr.suffix(3000))")
        }
        #expect(!mounts.isEmpty, "the builder container was never seen")
        #expect(mounts.allSatisfy { $0 == "[]" || $0 == "null" }, "\(mounts)")
        try await Self.expectHostOwners(work + "/out/debian.tar")
    }
}

/// A flag one thread sets and another polls.
final class StopFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}
